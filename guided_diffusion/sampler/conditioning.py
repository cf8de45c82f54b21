"""What a sampling job gives each sample besides x_T: class labels, model inputs, a guidance gradient.

Two kinds, both addressed by the global sample index k (so image k is the same for any batch size
or process count, as for unconditional sampling):

* :class:`ClassifierGuidance` (Dhariwal & Nichol 2021, ``scripts/classifier_sample.py``): label
  y_k is drawn from the per-sample label stream (as :mod:`guided_diffusion.sampler.generate` draws the
  labels of a class-conditional model), the diffusion model sees y_k only if it is
  class-conditional, and the loop's ``cond_fn`` is ``s * grad_x log p(y | x_t, t)`` of the
  noisy-image classifier (upstream's ``cond_fn``). The loop applies it in the mean form for DDPM
  and in the score form for DDIM and the other solvers (``GaussianDiffusion.step_predictions``).
* :class:`LowResInputs` (``scripts/super_res_sample.py``): sample k gets ``low_res`` = base image
  k mod N (uint8 NHWC -> [-1, 1] NCHW) and, for a class-conditional model, that image's label.

Each object has ``inputs(indices, noise, model_num_classes) -> (labels or None, model_kwargs)``,
``wrap_model(model, model_num_classes)`` and ``cond_fn`` (None when there is no gradient term).
"""

import numpy as np
import torch
import torch.nn.functional as F

LABEL_STREAM = 0x7FFF0000  # the per-sample class-label stream of guided_diffusion.sampler.generate.SampleNoise


class _WithoutLabels:
    """An unconditional model that ignores the ``y`` the job passes for its classifier."""

    def __init__(self, model):
        self.model = model
        self.num_classes = None

    def __call__(self, x, t, y=None, **kwargs):
        return self.model(x, t, **kwargs)


def classifier_log_prob_grad(classifier, x, t, y, scale=1.0):
    """``scale * d/dx sum_b log softmax(classifier(x, t))[b, y_b]``, (B, C, H, W) (upstream's cond_fn).

    :param t: (B,) timesteps as the classifier was trained on (original ones, as the UNet gets).
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        logits = classifier(x_in, t)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        selected = log_probs[torch.arange(logits.shape[0], device=logits.device), y.view(-1)]
        return torch.autograd.grad(selected.sum(), x_in)[0] * scale


class ClassifierGuidance:
    """Classifier guidance: per-sample labels and ``cond_fn = scale * grad log p(y | x_t, t)``.

    :param classifier: the noisy-image classifier ``(x, t) -> logits`` (B, num_classes), in eval mode.
    :param scale: the guidance scale s.
    :param num_classes: labels are drawn uniformly from 0..num_classes-1.
    """

    def __init__(self, classifier, scale, num_classes):
        self.classifier = classifier
        self.scale = float(scale)
        self.num_classes = int(num_classes)

    def cond_fn(self, x, t, y=None, **_):
        if y is None:
            raise ValueError("classifier guidance needs the labels y in model_kwargs")
        return classifier_log_prob_grad(self.classifier, x, t, y, self.scale)

    def inputs(self, indices, noise, model_num_classes=None):
        if model_num_classes is not None and self.num_classes > model_num_classes:
            raise ValueError(f"--classifier_num_classes {self.num_classes} exceeds the {model_num_classes} classes "
                             "of the class-conditional diffusion model")
        labels = noise.integers(indices, LABEL_STREAM, self.num_classes)
        return labels, {"y": labels}

    def wrap_model(self, model, model_num_classes=None):
        return model if model_num_classes is not None else _WithoutLabels(model)

    def describe(self):
        return f"classifier guidance scale={self.scale}"


class LowResInputs:
    """Super-resolution inputs: sample k upsamples base image k mod N.

    :param images: uint8 (N, h, w, C) base images (C = 1 or 3; grey is read as 1 channel when the
        model is grey, replicated when it is RGB).
    :param labels: int64 (N,) or None (needed for class-conditional models).
    :param image_channels: the model's image channels.
    """

    cond_fn = None

    def __init__(self, images, labels=None, image_channels=3):
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] == 0:
            raise ValueError(f"base samples: arr_0 must be uint8 (N, H, W, C) with N >= 1, got {images.dtype} "
                             f"{images.shape}")
        if images.shape[-1] not in (1, 3):
            raise ValueError(f"base samples: arr_0 must have 1 or 3 channels, got {images.shape[-1]}")
        if images.shape[-1] != image_channels:
            images = images[..., :1] if image_channels == 1 else np.repeat(images, 3, axis=-1)
        self.images = images
        self.labels = None if labels is None else np.asarray(labels).astype(np.int64)
        if self.labels is not None and self.labels.shape != (images.shape[0],):
            raise ValueError(f"base samples: arr_1 (labels) must have shape ({images.shape[0]},), "
                             f"got {self.labels.shape}")

    def low_res(self, indices):
        """(B, C, h, w) float32 in [-1, 1] on ``indices``' device."""
        rows = (indices.cpu().numpy() % self.images.shape[0]).astype(np.int64)
        arr = torch.from_numpy(self.images[rows]).to(indices.device)
        return arr.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()

    def inputs(self, indices, noise, model_num_classes=None):
        kwargs = {"low_res": self.low_res(indices)}
        labels = None
        if model_num_classes is not None:
            if self.labels is None:
                raise ValueError("the super-resolution model is class-conditional but --base_samples has no "
                                 "arr_1 labels")
            rows = indices.cpu().numpy() % self.images.shape[0]
            labels = torch.from_numpy(self.labels[rows]).to(indices.device)
            if int(labels.max()) >= model_num_classes or int(labels.min()) < 0:
                raise ValueError(f"--base_samples labels must lie in 0..{model_num_classes - 1}")
            kwargs["y"] = labels
        return labels, kwargs

    def wrap_model(self, model, model_num_classes=None):
        return model

    def describe(self):
        return f"super-resolution from {self.images.shape[0]} base images"
