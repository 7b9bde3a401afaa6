"""The generation engine: the only package that imports torch and diffusers.

Import its modules where they are needed (`alice_spool.engine.generate`, ...); this
package itself imports nothing heavy, so naming it costs nothing.
"""
