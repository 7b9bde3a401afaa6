"""Step caching (`runner.cache`) for the transformer families: diffusers' cache hooks on
a FLUX.1 or SD 3.x transformer, which skip work on steps whose result changes little
(First Block Cache: the rest of the blocks are skipped when the first block's output is
within a threshold of the last step's) or predict it from the last steps (TaylorSeer).
Faster and a little different from the uncached image; each pipeline call starts afresh.
The SD families' UNets have no such hooks: they run uncached whatever the setting."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# diffusers' defaults, as its documentation runs them.
FIRST_BLOCK_THRESHOLD = 0.05


def cache_config(name: str, compute_dtype: Any) -> Any:
    """diffusers' config for the cache `name` (None for "none")."""
    if name == "first_block":
        from diffusers.hooks import FirstBlockCacheConfig

        return FirstBlockCacheConfig(threshold=FIRST_BLOCK_THRESHOLD)
    if name == "taylorseer":
        from diffusers.hooks import TaylorSeerCacheConfig

        return TaylorSeerCacheConfig(taylor_factors_dtype=compute_dtype)
    return None


def enable(pipeline: Any, name: str, compute_dtype: Any) -> str:
    """Turn the cache on for the pipeline's transformer; the cache that runs ("none"
    where the model has no transformer to cache, or `name` is "none")."""
    config = cache_config(name, compute_dtype)
    transformer = getattr(pipeline, "transformer", None)
    if config is None or transformer is None or not hasattr(transformer, "enable_cache"):
        return "none"
    transformer.enable_cache(config)
    log.info("step cache %s on %s", name, type(transformer).__name__)
    return name
