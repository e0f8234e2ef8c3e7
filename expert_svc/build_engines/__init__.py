"""`make build-engines`: quantize Llama 3 experts with ModelOpt and build TensorRT-LLM engines.

`python -m expert_svc.build_engines --manifest deploy/engines/llama3-8b.yaml` validates the
manifest, checks the machine, then runs stage 1 (ModelOpt PTQ and checkpoint export) and stage 2
(`trtllm-build`) for every expert whose outputs are not up to date.
"""

from .manifest import ExpertBuild, ManifestError, load_manifest, parse_manifest
from .pipeline import BuildError, execute, summary_table

__all__ = [
           "BuildError",
           "ExpertBuild",
           "ManifestError",
           "execute",
           "load_manifest",
           "parse_manifest",
           "summary_table",
]
