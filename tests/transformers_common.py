"""transformers' own common test mixins, for the adapter tests that run them over the avbert classes.

They come from the transformers sdist, fetched by `tests/fetch_transformers_tests.py` (which `make test` runs) into
`.venv/transformers-tests` (or `$AVBERT_TRANSFORMERS_TESTS`). Importing this module puts them on `sys.path` as the
package `transformers_tests` and fails with the command to run when they are absent, so CI cannot skip them silently.

The sdist ships the top-level common files but not three modules they import; this module provides stand-ins:
- `exporters.test_export.ExportTesterMixin` (torch.export tests, which `ModelTesterMixin` inherits): an empty mixin,
  so no export test runs (transformers tests torch.export for decoder language models only);
- `generation.test_utils.GenerationTesterMixin`: an empty class, only ever used in `issubclass` checks (AVBERT does
  not generate);
- `utils.test_configuration_utils.config_common_kwargs`: the `PreTrainedConfig` keyword arguments of 5.x, each with a
  non-default value, which `ConfigTester.check_config_arguments_init` passes and reads back;
- `fetch_hub_objects_for_ci.url_to_local_path` (from transformers' `utils/` folder, which the processor mixin puts on
  `sys.path`): the identity, so the processor tests that read media from the Hub see the URL and cannot fetch it here
  (no network); adapters skip those tests.
"""

import os
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRANSFORMERS_TESTS = Path(os.environ.get("AVBERT_TRANSFORMERS_TESTS", REPO / ".venv" / "transformers-tests"))

if not (TRANSFORMERS_TESTS / "transformers_tests" / "test_modeling_common.py").is_file():
    raise ImportError(
        f"transformers' common tests are not in {TRANSFORMERS_TESTS}; "
        f"run `python tests/fetch_transformers_tests.py {TRANSFORMERS_TESTS}` (make test does)"
    )


class ExportTesterMixin:
    """Stand-in for the mixin the sdist does not ship: no torch.export tests."""


class GenerationTesterMixin:
    """Stand-in for the mixin the sdist does not ship: AVBERT has no `generate`."""


CONFIG_COMMON_KWARGS = {
    "output_hidden_states": True,
    "return_dict": False,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "is_encoder_decoder": True,
    "architectures": ["AVBertModel"],
    "id2label": {0: "first", 1: "second"},
    "label2id": {"first": 0, "second": 1},
    "problem_type": "regression",
}


def _stand_in(name: str, **attributes) -> None:
    module = types.ModuleType(f"transformers_tests.{name}")
    module.__dict__.update(attributes)
    sys.modules[module.__name__] = module


if str(TRANSFORMERS_TESTS) not in sys.path:
    sys.path.insert(0, str(TRANSFORMERS_TESTS))
for package in ("exporters", "generation", "utils"):
    _stand_in(package, __path__=[])
_stand_in("exporters.test_export", ExportTesterMixin=ExportTesterMixin)
_stand_in("generation.test_utils", GenerationTesterMixin=GenerationTesterMixin)
_stand_in("utils.test_configuration_utils", config_common_kwargs=CONFIG_COMMON_KWARGS)
sys.modules["fetch_hub_objects_for_ci"] = types.ModuleType("fetch_hub_objects_for_ci")
sys.modules["fetch_hub_objects_for_ci"].url_to_local_path = lambda url: url

from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor  # noqa: E402
from transformers_tests.test_processing_common import ProcessorTesterMixin  # noqa: E402
from transformers_tests.test_sequence_feature_extraction_common import (  # noqa: E402
    SequenceFeatureExtractionTestMixin,
)
from transformers_tests.test_video_processing_common import VideoProcessingTestMixin  # noqa: E402

__all__ = [
    "ConfigTester",
    "ModelTesterMixin",
    "ProcessorTesterMixin",
    "SequenceFeatureExtractionTestMixin",
    "VideoProcessingTestMixin",
    "floats_tensor",
    "ids_tensor",
]
