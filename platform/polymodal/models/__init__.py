"""One subpackage per system; each registers its tasks in ``polymodal.registry``."""
