"""Content-addressed artifact stores, storage only: the generic folder store with manifests
and locking (:mod:`.artifacts`), the keys of what is stored (:mod:`.keys`), the ONNX export
store (:mod:`.exports`), the TensorRT engine store (:mod:`.store`), the runtime's choice of an
engine pair from it (:mod:`.select`) and the TensorRT-RTX runtime cache (:mod:`.runtime_cache`)."""
