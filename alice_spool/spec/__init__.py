"""A generation request: its model (request.py: each field's rule, the rules between
fields, the limits of a configuration's `[generation]` settings, the JSON schema
/openapi.json shows), parsed into the normalised `JobSpec` a job holds (job.py,
parsing.py). Pure, no I/O. Re-exported here: what the rest of the spool imports, the
field limits and parsers among them (fields/)."""

from __future__ import annotations

from ..fields import CLIP_SKIP_MAX as CLIP_SKIP_MAX
from ..fields import GUIDANCE_MAX as GUIDANCE_MAX
from ..fields import IDEMPOTENCY_KEY_MAX_CHARS as IDEMPOTENCY_KEY_MAX_CHARS
from ..fields import LORA_PREFIX as LORA_PREFIX
from ..fields import LORA_SCALE_MAX as LORA_SCALE_MAX
from ..fields import LORA_SCALE_MIN as LORA_SCALE_MIN
from ..fields import LORAS_LIMIT as LORAS_LIMIT
from ..fields import LORAS_MAX as LORAS_MAX
from ..fields import MODEL_PREFIX as MODEL_PREFIX
from ..fields import N_MAX as N_MAX
from ..fields import PIXELS_MAX as PIXELS_MAX
from ..fields import PRIORITY_MAX as PRIORITY_MAX
from ..fields import PRIORITY_MIN as PRIORITY_MIN
from ..fields import PROMPT_MAX_CHARS as PROMPT_MAX_CHARS
from ..fields import SEED_MAX as SEED_MAX
from ..fields import SEQUENCE_MAX as SEQUENCE_MAX
from ..fields import SIZE_MAX as SIZE_MAX
from ..fields import SIZE_MIN as SIZE_MIN
from ..fields import SIZE_MULTIPLE as SIZE_MULTIPLE
from ..fields import STEPS_MAX as STEPS_MAX
from ..fields import VAE_PREFIX as VAE_PREFIX
from ..fields import check_priority_cap as check_priority_cap
from ..fields import normalise_lora_id as normalise_lora_id
from ..fields import normalise_model_id as normalise_model_id
from ..fields import normalise_scheduler as normalise_scheduler
from ..fields import normalise_vae_id as normalise_vae_id
from ..fields import parse_dimension as parse_dimension
from ..fields import parse_idempotency_key as parse_idempotency_key
from ..fields import parse_integer as parse_integer
from ..fields import parse_loras as parse_loras
from ..fields import parse_number as parse_number
from ..fields import parse_priority as parse_priority
from ..fields import parse_size as parse_size
from ..fields import parse_string as parse_string
from ..fields import type_name as type_name
from ..hires import HiresFix as HiresFix
from ..hires import check_hires as check_hires
from ..hires import parse_hires as parse_hires
from .job import FAMILY_FIELDS as FAMILY_FIELDS
from .job import IGNORED as IGNORED
from .job import SCHEDULERS as SCHEDULERS
from .job import SPEC_FIELDS as SPEC_FIELDS
from .job import JobSpec as JobSpec
from .job import Request as Request
from .job import random_seed as random_seed
from .parsing import load_json as load_json
from .parsing import parse_json as parse_json
from .parsing import parse_jsonl as parse_jsonl
from .parsing import parse_request as parse_request
from .parsing import parse_spec as parse_spec
from .parsing import spec_of as spec_of
from .request import DEFAULT_STRENGTH as DEFAULT_STRENGTH
from .request import GenerationRequest as GenerationRequest
from .request import JobRequest as JobRequest
from .request import check_denoising_steps as check_denoising_steps
from .request import denoising_steps as denoising_steps
from .request import least_strength as least_strength
from .request import request_json_schema as request_json_schema
from .request import request_model as request_model
from .request import spec_model as spec_model
from .settings import BUILTIN_DEFAULTS as BUILTIN_DEFAULTS
from .settings import DEFAULT_GUIDANCE_SCALE as DEFAULT_GUIDANCE_SCALE
from .settings import DEFAULT_SCHEDULER as DEFAULT_SCHEDULER
from .settings import DEFAULT_STEPS as DEFAULT_STEPS
from .settings import BuiltinDefaults as BuiltinDefaults
from .settings import GenerationDefaults as GenerationDefaults
