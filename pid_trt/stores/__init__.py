"""Content-addressed artifact stores: the generic folder store with manifests and locking
(:mod:`.artifacts`) and the TensorRT engine store on top of it (:mod:`.store`)."""
