"""Half-precision helpers.

``convert_module_to_f16`` / ``convert_module_to_f32`` are what ``UNetModel.convert_to_fp16`` applies
(upstream semantics: only convolution weights and biases change dtype; norms, linear layers and the
time embedding stay float32).

For training, ``MixedPrecisionTrainer`` (below) keeps float32 master weights for the optimizer and
scales the loss dynamically; with ``use_fp16=False`` it is a thin pass-through.
"""

import math

import torch
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


# ---------------------------------------------------------------------------------------- training
# Mixed-precision training in upstream's style: the model keeps float16 conv weights, the
# optimizer works on float32 "master" copies, and the loss is multiplied by 2**lg_loss_scale
# before backward (a dynamic scale: -1 on overflow, + fp16_scale_growth per good step).
# Unlike upstream, master parameters are kept one per model parameter (not flattened), so the
# optimizer state has the model's parameter order and ``master_params_to_state_dict`` is a
# plain copy.

INITIAL_LOG_LOSS_SCALE = 20.0


def make_master_params(model_params):
    """Float32 leaf copies of ``model_params`` (requires_grad)."""
    master = []
    for p in model_params:
        m = p.detach().clone().float()
        m.requires_grad_(True)
        master.append(m)
    return master


def model_grads_to_master_grads(model_params, master_params):
    """master.grad = float32(model.grad) (zeros where a model parameter got no gradient)."""
    for p, m in zip(model_params, master_params):
        g = p.grad.detach().float() if p.grad is not None else torch.zeros_like(m)
        if m.grad is None:
            m.grad = g.clone()
        else:
            m.grad.copy_(g)


def master_params_to_model_params(model_params, master_params):
    """Copy the master values into the model's (possibly float16) parameters."""
    with torch.no_grad():
        for p, m in zip(model_params, master_params):
            p.copy_(m)


def zero_grad(params):
    for p in params:
        if p.grad is not None:
            p.grad.detach_()
            p.grad.zero_()


def param_norm_and_grad_norm(params, grad_scale=1.0):
    """(L2 norm of the values, L2 norm of the gradients / grad_scale) as floats (one device sync)."""
    with torch.no_grad():
        p_norms = [torch.linalg.vector_norm(p, dtype=torch.float32) for p in params]
        g_norms = [torch.linalg.vector_norm(p.grad, dtype=torch.float32) for p in params if p.grad is not None]
        both = torch.stack([
            torch.linalg.vector_norm(torch.stack(p_norms)) if p_norms else torch.zeros((), device=_device(params)),
            torch.linalg.vector_norm(torch.stack(g_norms)) if g_norms else torch.zeros((), device=_device(params)),
        ]).double().cpu()
    return float(both[0]), float(both[1]) / grad_scale


def _device(params):
    return params[0].device if params else torch.device("cpu")


class MixedPrecisionTrainer:
    """Backward, gradient unscaling and optimizer steps for a model in float32 or float16.

    :param model: the module; with ``use_fp16`` its ``convert_to_fp16()`` is called here.
    :param use_fp16: keep float32 master copies and scale the loss dynamically.
    :param fp16_scale_growth: increase of ``lg_loss_scale`` after each successful step.
    :param initial_lg_loss_scale: log2 of the first loss scale.

    ``master_params`` is what the optimizer and EMA use (the model's own parameters in float32
    mode). ``optimize(opt)`` returns False (and skips the step) when the gradients overflowed.
    ``last_param_norm`` / ``last_grad_norm`` hold the norms of the last ``optimize`` call
    (gradient norm after unscaling).
    """

    def __init__(self, *, model, use_fp16=False, fp16_scale_growth=1e-3,
                 initial_lg_loss_scale=INITIAL_LOG_LOSS_SCALE):
        self.model = model
        self.use_fp16 = bool(use_fp16)
        self.fp16_scale_growth = float(fp16_scale_growth)
        self.model_params = list(model.parameters())
        self.param_names = [name for name, _ in model.named_parameters()]
        self.lg_loss_scale = float(initial_lg_loss_scale)
        self.last_param_norm = float("nan")
        self.last_grad_norm = float("nan")
        if self.use_fp16:
            if getattr(model, "dtype", torch.float16) != torch.float16:
                raise ValueError("use_fp16: build the model with use_fp16=True too (its trunk dtype is float32)")
            self.master_params = make_master_params(self.model_params)
            model.convert_to_fp16()
        else:
            self.master_params = self.model_params

    def zero_grad(self):
        zero_grad(self.model_params)
        if self.use_fp16:
            zero_grad(self.master_params)

    def backward(self, loss):
        if self.use_fp16:
            (loss * (2.0 ** self.lg_loss_scale)).backward()
        else:
            loss.backward()

    def optimize(self, opt):
        if self.use_fp16:
            return self._optimize_fp16(opt)
        return self._optimize_normal(opt)

    def _optimize_fp16(self, opt):
        model_grads_to_master_grads(self.model_params, self.master_params)
        scale = 2.0 ** self.lg_loss_scale
        param_norm, grad_norm = param_norm_and_grad_norm(self.master_params, grad_scale=scale)
        self.last_param_norm, self.last_grad_norm = param_norm, grad_norm
        if not math.isfinite(grad_norm):
            self.lg_loss_scale -= 1
            self.zero_grad()
            return False
        for m in self.master_params:
            m.grad.mul_(1.0 / scale)
        opt.step()
        zero_grad(self.master_params)
        master_params_to_model_params(self.model_params, self.master_params)
        self.lg_loss_scale += self.fp16_scale_growth
        return True

    def _optimize_normal(self, opt):
        self.last_param_norm, self.last_grad_norm = param_norm_and_grad_norm(self.master_params)
        opt.step()
        return True

    def master_params_to_state_dict(self, master_params=None):
        """The model's state_dict with ``master_params`` (float32) as the parameter values."""
        master_params = self.master_params if master_params is None else master_params
        state = self.model.state_dict()
        for name, m in zip(self.param_names, master_params):
            assert name in state, name
            state[name] = m.detach().float().clone()
        return state

    def state_dict_to_master_params(self, state_dict):
        """Float32 tensors for the master parameters, read from a model state_dict."""
        return [state_dict[name].detach().float().clone() for name in self.param_names]
