"""Glue to the tools users already run.

- :mod:`pid_trt.integrations.diffusers`: a diffusers pipeline's latent -> PiD latent
  (``pid_latent``, ``to_pid_frame``), early capture (``EarlyCapture``), text -> 2K-4K image
  (``generate``) and image -> latent (``encode_image``): the public entry point, re-exporting
  :mod:`~pid_trt.integrations.latents` (unpacking, frames), :mod:`~pid_trt.integrations.vae`
  (VAE normalisation, encode, noise) and :mod:`~pid_trt.integrations.ldm` (per-LDM facts and
  defaults). Needs the ``diffusers`` extra.
- :mod:`pid_trt.integrations.generate_run`: many prompts and captures through one pipeline
  and one Decoder (``pidtrt generate -o DIR/``): the output layout, the per-prompt worker,
  the run manifest; :mod:`~pid_trt.integrations.vae_compare` puts the LDM's own VAE decode
  beside PiD's, with the colour drift of :mod:`~pid_trt.integrations.colour` (CIELAB).
- :mod:`pid_trt.integrations.rae_encoders`: image -> latent for the dinov2 (RAE) and siglip
  (Scale-RAE) nets, by upstream's recipes through transformers' own model classes.

Nothing here imports diffusers or transformers at import time.
"""
