"""Schedule types for the two diffusers schedulers that lack them: Euler a's sigma
curves (Karras, exponential, beta), and LCM's timestep spacings."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, LCMScheduler


class CurvedEulerAncestralScheduler(EulerAncestralDiscreteScheduler):
    """Euler a with its sigmas on a curve (`curve`: "karras", "exponential", "beta" or
    None), made as EulerDiscreteScheduler makes them: the curve spans the sigmas of the
    configured spacing, and each timestep is the one of its sigma."""

    curve: str | None = None

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        super().set_timesteps(num_inference_steps, device)
        if self.curve is None:
            return
        spaced: np.ndarray = self.sigmas[:-1].numpy()  # type: ignore[has-type]
        # EulerDiscreteScheduler's own conversions: they read only the config and arguments.
        convert = {
            "karras": EulerDiscreteScheduler._convert_to_karras,
            "exponential": EulerDiscreteScheduler._convert_to_exponential,
            "beta": EulerDiscreteScheduler._convert_to_beta,
        }[self.curve]
        sigmas = np.asarray(
            convert(self, in_sigmas=spaced, num_inference_steps=num_inference_steps)
        )
        log_sigmas = np.log(((1 - self.alphas_cumprod) / self.alphas_cumprod).numpy() ** 0.5)
        timesteps = np.array(
            [EulerDiscreteScheduler._sigma_to_t(self, sigma, log_sigmas) for sigma in sigmas]
        )
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)


class SpacedLCMScheduler(LCMScheduler):
    """LCM with a timestep spacing (`spacing`: "linspace", "leading", "trailing" or None
    for LCM's own), each timestep moved to the nearest of the distillation grid's as
    A1111's LCM does, and more steps than the grid has allowed (the grid then grows)."""

    spacing: str | None = None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        original_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        original = original_inference_steps or self.config.original_inference_steps
        if num_inference_steps is not None:
            original = max(original, num_inference_steps)
        if self.spacing is not None and timesteps is None and num_inference_steps is not None:
            timesteps = self._spaced(num_inference_steps, original)
            num_inference_steps = None
        super().set_timesteps(num_inference_steps, device, original, timesteps, strength)

    def _spaced(self, steps: int, original: int) -> list[int]:
        train = self.config.num_train_timesteps
        if self.spacing == "linspace":
            wanted = np.linspace(train - 1, 0, steps)
        elif self.spacing == "leading":
            wanted = (np.arange(steps) * (train // steps))[::-1] + self.config.steps_offset
        else:  # trailing
            wanted = np.arange(train, 0, -train / steps) - 1
        skip = train // original
        grid = np.arange(1, original + 1) * skip - 1
        nearest = grid[np.abs(grid[None, :] - wanted[:, None]).argmin(axis=1)]
        return sorted({int(t) for t in nearest}, reverse=True)  # strictly descending
