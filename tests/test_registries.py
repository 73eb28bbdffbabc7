"""VLT's registry names do not collide with Detectron2's DeepLab project or the official Mask2Former package: both
can be imported beside VLT, in either order (each order in a fresh interpreter, as registries are global)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The names the official Mask2Former package (facebookresearch/Mask2Former, mask2former/) registers in Detectron2's
# shared registries; it is not installable here, so a stand-in registers the same names.
OFFICIAL_MASK2FORMER = """
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
for registry, names in ((SEM_SEG_HEADS_REGISTRY, ["MaskFormerHead", "MSDeformAttnPixelDecoder", "BasePixelDecoder",
                                                  "TransformerEncoderPixelDecoder"]),
                        (META_ARCH_REGISTRY, ["MaskFormer"]), (BACKBONE_REGISTRY, ["D2SwinTransformer"])):
    for name in names:
        registry.register(type(name, (), {}))
"""
IMPORTS = {
    "deeplab": "import detectron2.projects.deeplab\n",
    "mask2former": OFFICIAL_MASK2FORMER,
    "vlt": "import vlt\n",
}
CHECK = """
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, META_ARCH_REGISTRY
assert SEM_SEG_HEADS_REGISTRY.get("VLTMaskFormerHead").__module__.startswith("vlt.")
assert SEM_SEG_HEADS_REGISTRY.get("VLTMSDeformAttnPixelDecoder").__module__.startswith("vlt.")
assert SEM_SEG_HEADS_REGISTRY.get("VLTDeepLabV3PlusHead").__module__.startswith("vlt.")
assert META_ARCH_REGISTRY.get("VLTSegmentor").__module__.startswith("vlt.")
print("ok")
"""


@pytest.mark.parametrize("order", [("vlt", "deeplab", "mask2former"), ("deeplab", "mask2former", "vlt")])
def test_vlt_imports_beside_other_detectron2_projects(order):
    code = "".join(IMPORTS[name] for name in order) + CHECK
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
