"""Half-precision helpers.

``convert_module_to_f16`` / ``convert_module_to_f32`` are what ``UNetModel.convert_to_fp16`` applies
(upstream semantics: only convolution weights and biases change dtype; norms, linear layers and the
time embedding stay float32).
"""

import torch.nn as nn


def convert_module_to_f16(module):
    """Convert the parameters of a conv layer to float16 (other modules are left alone)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module):
    """Undo ``convert_module_to_f16``."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()
