"""hcast models, in timm's style. Importing this package registers them with timm."""

from hcast.models import cast  # noqa: F401,E402  (registers cast_* with timm)
from hcast.models import hcast  # noqa: F401,E402  (registers hcast_* with timm)
from hcast.models import hier_vit  # noqa: F401,E402  (registers hier_vit_* with timm)
from hcast.weights import (  # noqa: F401,E402  (kept here for users who import them from hcast.models)
    UnsafeCheckpointError, download_gdrive_checkpoint, load_checkpoint_file, save_for_hf,
)
from hcast.models.factory import from_pretrained  # noqa: F401,E402
