"""The project's own error types.

Library code raises these with a one-line message that names the bad value and what was
expected; only the CLI prints them and chooses the exit code.
"""


class PidTrtError(Exception):
    """Base class of every error pid-trt raises on purpose."""


class ConfigError(PidTrtError, ValueError):
    """A net config, preset, bucket or option is unknown or unsupported."""


class InputFileError(PidTrtError, ValueError):
    """A latent, noise or other user file is missing or malformed."""


class CheckpointError(PidTrtError, ValueError):
    """A checkpoint cannot be loaded: unsafe, malformed, or not matching the config."""


class StoreError(PidTrtError):
    """An engine or ONNX artifact in the store is stale, foreign, corrupt or missing."""


class BackendUnavailableError(PidTrtError):
    """A backend's optional dependency (tensorrt, onnxruntime, CUDA) is not present."""


class ResourceError(PidTrtError):
    """A request does not fit the device memory or the engine's batch range."""


class EngineBuildError(PidTrtError):
    """An ONNX graph could not be parsed or built into a TensorRT engine."""
