"""Fixtures shared by the diffusers integration tests."""

from __future__ import annotations

import pytest


class Recorder:
    """A ``callback_on_step_end`` that keeps every step's latent (and never stops the run)."""

    def __init__(self):
        self.latents = []

    def __call__(self, pipe, i, t, kwargs):
        self.latents.append(kwargs["latents"].detach().clone())
        return kwargs


@pytest.fixture
def recorder() -> Recorder:
    """A fresh :class:`Recorder`: pass it as a pipeline's ``callback_on_step_end``."""
    return Recorder()
