"""fairseq tasks of the plugin (registered on import): `translation_ivon`."""
from labo_fairseq.tasks import translation_ivon  # noqa: F401
