"""The generation engine: the only package that imports torch and diffusers.

Import its modules where they are needed (`alice_spool.engine.generate`, ...); this
package itself imports nothing heavy, so naming it costs nothing.
"""

import os

# transformers prints advice when it is imported (e.g. that torchvision is missing,
# which the pipelines here do not need); only its errors are for our operators.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
