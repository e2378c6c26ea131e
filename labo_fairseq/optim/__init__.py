"""fairseq optimizers of the plugin (registered on import): `ivon`."""
from labo_fairseq.optim import ivon_optimizer  # noqa: F401
