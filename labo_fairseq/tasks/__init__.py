"""fairseq tasks of the plugin (registered on import): `translation_ivon`, `translation_sam`."""
from labo_fairseq.tasks import translation_ivon  # noqa: F401
from labo_fairseq.tasks import translation_sam  # noqa: F401
