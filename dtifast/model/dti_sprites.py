"""The DTI-Sprites model: learned sprites, transformation heads, greedy layer selection, compositing.

One forward pass (multi-object configs, ``n_objects = L > 1``):

1. the encoder turns each image into features;
2. every sprite k (colours, mask, and in training a footprint "canvas" for the mask noise) is
   transformed by the (layer l, sprite k) head's sprite-level transforms at sprite resolution, then by
   layer l's colour transform: the *sprite-space candidates* ``(L, K, B, C + E, h, w)``;
3. layer l's position transform places its candidates in the image; the greedy search picks one
   sprite per layer (no gradient), scoring candidates in a fused op that never builds the
   ``(L, K, B, C, H, W)`` image-space tensor;
4. the selected sprites are placed, composited with the occlusion matrix over the background, and
   compared with the image (mean squared error) in a fused render-loss op.

Single-object configs (``L = 1`` without a layer transform) score all K·M sprite/background pairs and
keep the minimum. The math is that of the authors' code (github.com/monniert/dti-sprites); the
upstream fixtures in the tests hold it to their outputs to 1e-8 in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from dtifast import ops
from dtifast.ops._checks import assert_finite, check_shape, check_tensor

from .encoders import Encoder
from .heads import BatchedMLP
from . import init as sprite_init
from .transforms import TransformSequence

REASSIGN_NOISE_SCALE = 1e-4
EMPTY_CLUSTER_THRESHOLD = 0.2
SPRITE_VALUE, BACKGROUND_VALUE = 0.9, 0.5


@dataclass
class ModelOutput:
    """What a training forward returns.

    Attributes:
        loss: scalar reconstruction loss.
        selection: ``(L, K, B)`` one-hot greedy choice (multi-layer models), else None.
        distances: ``(B, L·K)`` = 1 − selection (multi-layer) or ``(B, M·K)`` per-candidate MSE (single-layer).
    """
    loss: torch.Tensor
    selection: Optional[torch.Tensor]
    distances: torch.Tensor


@dataclass
class _Candidates:
    sprites: torch.Tensor                 # (L, K, B, C+E, h, w) sprite space, or image space without a layer warp
    position: Optional[torch.Tensor]      # (L, B, 3) layer position params, None for image-space candidates
    noise: Optional[torch.Tensor]         # (K, 1, H, W) scaled mask noise, or None
    backgrounds: Optional[torch.Tensor]   # (M, B, C, H, W) or None
    occlusion: torch.Tensor               # (L, L, B)


class DTISprites(nn.Module):
    """DTI-Sprites (Monnier et al., ICCV 2021).

    Args:
        model_cfg: the validated ``model`` section of a config (see :mod:`dtifast.config`).
        img_size: ``(H, W)`` of the images.
        n_channels: C.
        init_images: ``(N, C, H, W)`` dataset images for the ``sample``/``mean`` inits, else None.

    Conventions: ``K = n_sprites`` counts the empty sprite when ``add_empty_sprite``; sprite index k in
    selections and labels is ``k`` (labels use ``k + 1``, 0 is the background).
    """

    def __init__(self, model_cfg: Mapping[str, Any], img_size: Sequence[int], n_channels: int,
                 init_images: Optional[torch.Tensor] = None):
        super().__init__()
        cfg = dict(model_cfg)
        if cfg.get("name", "dti_sprites") != "dti_sprites":
            raise ValueError(f"model.name must be 'dti_sprites', got {cfg['name']!r}")
        if cfg.get("norm_layer") not in (None, "id", "identity"):
            raise ValueError(f"model.norm_layer {cfg['norm_layer']!r} is not supported (use null)")
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.n_channels = C = int(n_channels)
        self.sprite_size = tuple(cfg.get("sprite_size") or self.img_size)
        self.n_objects = L = int(cfg.get("n_objects", 1))
        n_real = int(cfg["n_sprites"])
        self.add_empty_sprite = bool(cfg.get("add_empty_sprite", False))
        self.n_sprites = K = n_real + int(self.add_empty_sprite)
        self.n_backgrounds = M = int(cfg.get("n_backgrounds", 0))
        self.lambda_empty_sprite = float(cfg.get("lambda_empty_sprite", 0.0))
        self.inject_noise = float(cfg.get("inject_noise", 0.0) or 0.0)
        self.estimate_minimum = bool(cfg.get("estimate_minimum", False))
        self.greedy_iter = int(cfg.get("greedy_algo_iter", 1))
        self.pred_occlusion = bool(cfg.get("pred_occlusion", False))
        self.reassign_cluster = bool(cfg.get("reassign_cluster", True))
        threshold = cfg.get("empty_cluster_threshold")
        self.empty_cluster_threshold = EMPTY_CLUSTER_THRESHOLD / n_real if threshold is None else float(threshold)
        freeze = cfg.get("freeze_sprite", False)
        self.freeze_milestone = int(freeze) if freeze and not isinstance(freeze, bool) else -1
        self.backend = cfg.get("backend")
        if cfg.get("use_clamp", "soft") not in ("soft", "soft0.01"):
            raise ValueError(f"model.use_clamp {cfg['use_clamp']!r} is not supported (upstream's configs use 'soft')")
        if L > 1 and not self.estimate_minimum:
            raise ValueError("model.estimate_minimum must be true when model.n_objects > 1")

        # Sprites, masks, backgrounds.
        std = cfg.get("gaussian_weights_std")
        self.prototype_params = nn.Parameter(sprite_init.init_images(
            n_real, cfg.get("proto_init", "constant"), C, self.sprite_size, SPRITE_VALUE, std, init_images))
        self.mask_params = nn.Parameter(sprite_init.init_masks(
            n_real, cfg.get("mask_init", "constant"), self.sprite_size, std))
        if M > 0:
            self.bkg_params = nn.Parameter(sprite_init.init_images(M, cfg.get("bkg_init", "constant"), C, self.img_size,
                                                       BACKGROUND_VALUE, std, init_images))
        self.register_buffer("cur_epoch", torch.zeros((), dtype=torch.long))
        # The epoch as a Python int too: a forward reads it (frozen sprites) and must not read a GPU buffer.
        self._epoch = 0
        self.register_load_state_dict_post_hook(_follow_loaded_epoch)

        # Encoder and transformation heads (all sharing the encoder's features).
        self.encoder = Encoder(C, self.img_size, cfg.get("encoder_name", "resnet20"), cfg.get("with_pool", True))
        n_feat, n_hidden = self.encoder.out_features, int(cfg.get("n_hidden_layers", 2))
        common = dict(in_features=n_feat, n_colors=C, n_hidden_layers=n_hidden, grid_size=int(cfg.get("grid_size", 4)),
                      backend=self.backend)
        layer_seq = cfg.get("transformation_sequence_layer", "identity")
        self.has_layer_tsf = layer_seq not in ("id", "identity")
        if self.has_layer_tsf:
            if cfg.get("curriculum_learning_layer"):
                raise ValueError("model.curriculum_learning_layer is not supported (upstream's configs use false)")
            self.layer_tsf = TransformSequence(layer_seq, L, out_size=self.img_size,
                                               padding=cfg.get("padding_mode", "zeros"), **common)
            if self.layer_tsf.specs[-1].kind != "position" or any(
                    s.kind not in ("color", "identity") for s in self.layer_tsf.specs[:-1]):
                raise ValueError(f"model.transformation_sequence_layer must be colour/identity modules then "
                                 f"'position', got {layer_seq!r}")
        elif self.sprite_size != self.img_size:
            raise ValueError(f"model.sprite_size {list(self.sprite_size)} must equal the image size "
                             f"{list(self.img_size)} when there is no layer transformation")
        self.sprite_tsf = TransformSequence(cfg.get("transformation_sequence", "identity"), L * K,
                                            out_size=self.sprite_size, padding=cfg.get("padding_mode", "zeros"),
                                            curriculum=cfg.get("curriculum_learning", False), **common)
        if M > 0:
            self.bkg_tsf = TransformSequence(cfg.get("transformation_sequence_bkg", "identity"), M,
                                             out_size=self.img_size, padding="border",
                                             curriculum=cfg.get("curriculum_learning_bkg", False), **common)
        if self.pred_occlusion:
            self.occ_predictor = BatchedMLP(1, n_feat, max(L * (L - 1) // 2, 1), int(cfg.get("n_linear_layers", 2)))
        else:
            self.register_buffer("occ_grid", torch.tril(torch.ones(L, L), diagonal=-1))

    # ------------------------------------------------------------------------------------------------
    # Parameters, state, schedule
    # ------------------------------------------------------------------------------------------------

    @property
    def are_sprites_frozen(self) -> bool:
        return self.freeze_milestone > 0 and self._epoch < self.freeze_milestone

    @property
    def prototypes(self) -> torch.Tensor:
        """``(K, C, h, w)`` sprite colours in ``[0, 1]`` (softclipped; the empty sprite is black)."""
        return ops.softclip(self._with_empty(self.prototype_params), backend=self.backend)

    @property
    def masks(self) -> torch.Tensor:
        """``(K, 1, h, w)`` sprite masks (softclipped; the empty sprite's is 0)."""
        return ops.softclip(self._with_empty(self.mask_params), backend=self.backend)

    @property
    def backgrounds(self) -> Optional[torch.Tensor]:
        """``(M, C, H, W)`` backgrounds or None."""
        return ops.softclip(self.bkg_params, backend=self.backend) if self.n_backgrounds else None

    def cluster_parameters(self) -> list[nn.Parameter]:
        """Sprites, masks and backgrounds (upstream trains them without weight decay)."""
        return [self.prototype_params, self.mask_params] + ([self.bkg_params] if self.n_backgrounds else [])

    def network_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: encoder and heads."""
        cluster = {id(p) for p in self.cluster_parameters()}
        return [p for p in self.parameters() if id(p) not in cluster]

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch counter and the curriculum (module activations) and freeze state it implies."""
        self._epoch = int(epoch)
        self.cur_epoch.fill_(self._epoch)
        for tsf in self._transformers():
            tsf.set_epoch(int(epoch))

    def step_epoch(self) -> None:
        """Advance one epoch (call at the end of each training epoch, as upstream's ``model.step()``)."""
        self.set_epoch(self._epoch + 1)

    def _transformers(self) -> list[TransformSequence]:
        out = [self.sprite_tsf]
        if self.has_layer_tsf:
            out.append(self.layer_tsf)
        if self.n_backgrounds:
            out.append(self.bkg_tsf)
        return out

    def _with_empty(self, params: torch.Tensor) -> torch.Tensor:
        if not self.add_empty_sprite:
            return params
        return torch.cat([params, torch.zeros_like(params[:1])])

    # ------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------

    def check_input(self, x: object) -> torch.Tensor:
        """Validate a batch of images ``(B, C, H, W)`` for this model: shape, dtype and device, and finite
        values without a host read (see :func:`dtifast.ops._checks.assert_finite`). The model's ops then
        skip their own value checks (unless turned on, :func:`dtifast.ops.value_checks`)."""
        check_tensor(x, "x", ndim=4)
        check_shape(x, "x", (None, self.n_channels, *self.img_size))
        dtype = self.prototype_params.dtype
        if x.dtype != dtype:
            raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {dtype}; convert one of them")
        if x.device != self.prototype_params.device:
            raise ValueError(f"x is on {x.device} but the model is on {self.prototype_params.device}")
        assert_finite(x, "x")
        return x

    def _sprite_bank(self, with_noise: bool) -> torch.Tensor:
        """``(K, C + 1 (+1), h, w)``: colours, mask (raw when noise follows, else softclipped), canvas."""
        protos = self.prototypes
        if with_noise:
            masks = self._with_empty(self.mask_params)
            canvas = torch.ones_like(masks)
            if self.add_empty_sprite:
                canvas[-1] = 0  # the empty sprite gets no mask noise
            bank = torch.cat([protos, masks, canvas], dim=1)
        else:
            bank = torch.cat([protos, self.masks], dim=1)
        return bank.detach() if self.are_sprites_frozen else bank

    def _occlusion(self, features: torch.Tensor) -> torch.Tensor:
        L, B = self.n_objects, features.shape[0]
        if not self.pred_occlusion:
            return self.occ_grid.to(features.dtype)[..., None].expand(L, L, B)
        lower = torch.sigmoid(self.occ_predictor(features)[0])                  # (B, L(L-1)/2)
        rows, cols = torch.tril_indices(L, L, offset=-1, device=features.device)
        grid = features.new_zeros(B, L, L)
        grid[:, rows, cols] = lower[:, : rows.numel()]
        grid = grid + torch.triu(1 - grid.transpose(1, 2), diagonal=1)
        return grid.permute(1, 2, 0)

    def _candidates(self, x: torch.Tensor, with_noise: bool, mask_noise: Optional[torch.Tensor]) -> _Candidates:
        B = x.shape[0]
        L, K, M = self.n_objects, self.n_sprites, self.n_backgrounds
        features = self.encoder(x)
        bank = self._sprite_bank(with_noise)                                      # (K, C+E, h, w)
        sprite_params = self.sprite_tsf.predict(features)
        if self.sprite_tsf.active_specs():
            per_head = bank.repeat(L, 1, 1, 1)[:, None].expand(-1, B, -1, -1, -1)
            sprites = self.sprite_tsf.apply(per_head, sprite_params).view(L, K, B, *bank.shape[1:])
        else:
            sprites = bank[None, :, None].expand(L, K, B, *bank.shape[1:])
        position = None
        if self.has_layer_tsf:
            layer_params = self.layer_tsf.predict(features)                       # {i: (L, B, P)}
            last = len(self.layer_tsf.specs) - 1
            position = layer_params.pop(last)
            if layer_params:  # colour in sprite space, before the position warp (upstream's order)
                expanded = {i: p[:, None].expand(L, K, B, p.shape[-1]).reshape(L, K * B, -1)
                            for i, p in layer_params.items()}
                flat = sprites.reshape(L, K * B, *sprites.shape[3:])
                sprites = self.layer_tsf.apply(flat, expanded, only=lambda kind: kind != "position")
                sprites = sprites.view(L, K, B, *flat.shape[2:])
        noise = None
        if with_noise:
            if mask_noise is None:
                mask_noise = torch.rand(K, 1, *self.img_size, dtype=x.dtype, device=x.device)
            check_tensor(mask_noise, "mask_noise", ndim=4)
            check_shape(mask_noise, "mask_noise", (K, 1, *self.img_size))
            noise = self.inject_noise * (2 * mask_noise.to(x.dtype) - 1)
        backgrounds = None
        if M:
            bkg = self.backgrounds[:, None].expand(M, B, -1, -1, -1)
            backgrounds = self.bkg_tsf.apply(bkg, self.bkg_tsf.predict(features))
        return _Candidates(sprites, position, noise, backgrounds, self._occlusion(features))

    def _empty_penalty(self, K: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.add_empty_sprite or self.are_sprites_frozen:
            return None
        penalty = like.new_full((K,), self.lambda_empty_sprite)
        penalty[-1] = 0
        return penalty

    def _image_space(self, c: _Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-space colours ``(L, K, B, C, H, W)`` and masks (only for models without a layer warp)."""
        C = self.n_channels
        # One split, not three slices: its backward is one concatenation, where each slice's would zero a
        # gradient of the whole sprite tensor and the three would then be added.
        colors, masks, canvas = c.sprites.split([C, 1, c.sprites.shape[3] - C - 1], dim=3)
        if c.noise is not None:
            masks = ops.softclip(masks + canvas * c.noise[None, :, None], backend=self.backend)
        return colors, masks

    def _select(self, x: torch.Tensor, c: _Candidates) -> torch.Tensor:
        """Greedy ``(L, K, B)`` selection (no gradient)."""
        L, K, B = c.sprites.shape[:3]
        # While sprites are frozen the empty sprite is not a candidate (upstream).
        n = K - 1 if self.add_empty_sprite and self.are_sprites_frozen else K
        background = None if c.backgrounds is None else c.backgrounds[0]
        penalty = self._empty_penalty(n, x)
        with torch.no_grad():
            if c.position is not None:
                noise = None if c.noise is None else c.noise[:n]
                sel = ops.greedy_select_sprites(x, c.sprites[:, :n].detach(), c.position.detach(), c.occlusion.detach(),
                                                None if background is None else background.detach(), self.greedy_iter,
                                                penalty, noise, backend=self.backend)
            else:
                colors, masks = self._image_space(c)
                sel = ops.greedy_select(x, colors[:, :n], masks[:, :n], c.occlusion, background, self.greedy_iter,
                                        penalty, backend=self.backend)
        if n < K:
            sel = torch.cat([sel, sel.new_zeros(L, K - n, B)], dim=1)
        return sel

    def _selected_layers(self, c: _Candidates, selection: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The selected candidates ``(L, B, ...)`` and their noise ``(L, B, 1, H, W)``."""
        L, K, B = selection.shape
        k = selection.argmax(1)                                                   # (L, B)
        rows = torch.arange(L, device=k.device)[:, None]
        cols = torch.arange(B, device=k.device)[None, :]
        chosen = c.sprites[rows, k, cols]
        noise = None if c.noise is None else c.noise[k]
        return chosen, noise

    def _place_selected(self, c: _Candidates, selection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-space colours ``(L, B, C, H, W)`` and masks ``(L, B, 1, H, W)`` of the selected sprites."""
        chosen, noise = self._selected_layers(c, selection)
        L, B = chosen.shape[:2]
        if c.position is not None:
            flat_noise = None if noise is None else noise.flatten(0, 1)
            colors, masks = ops.place_sprites(chosen.flatten(0, 1), c.position.flatten(0, 1), self.img_size,
                                              flat_noise, backend=self.backend)
            return colors.view(L, B, *colors.shape[1:]), masks.view(L, B, *masks.shape[1:])
        C = self.n_channels
        colors, masks, canvas = chosen.split([C, 1, chosen.shape[2] - C - 1], dim=2)  # see _image_space
        if noise is not None:
            masks = ops.softclip(masks + canvas * noise, backend=self.backend)
        return colors, masks

    def forward(self, x: torch.Tensor, mask_noise: Optional[torch.Tensor] = None) -> ModelOutput:
        """Loss of a batch.

        Args:
            x: images ``(B, C, H, W)`` in ``[0, 1]``, the model's dtype and device.
            mask_noise: ``(K, 1, H, W)`` uniform ``[0, 1)`` draw for the train-time mask noise; sampled
                here when None. Ignored in eval mode or when ``inject_noise`` is 0.

        Returns:
            :class:`ModelOutput`.
        """
        self.check_input(x)
        with_noise = self.training and self.inject_noise > 0
        c = self._candidates(x, with_noise, mask_noise)
        if not self.estimate_minimum:
            distances = self._candidate_distances(x, c)
            return ModelOutput(distances.min(1)[0].mean(), None, distances)
        selection = self._select(x, c)
        background = None if c.backgrounds is None else c.backgrounds[0]
        if c.position is not None:
            chosen, noise = self._selected_layers(c, selection)
            loss = ops.render_loss(x, chosen, c.position, c.occlusion, background, noise, backend=self.backend)
        else:
            colors, masks = self._place_selected(c, selection)
            out = ops.composite_layers(colors, masks, c.occlusion, background, backend=self.backend)
            loss = ((out - x) ** 2).mean()
        return ModelOutput(loss, selection, 1 - selection.permute(2, 0, 1).flatten(1))

    def _single_layer(self, c: _Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        colors, masks = self._image_space(c)
        return colors[0], masks[0]                                                # (K, B, ...)

    def _candidate_distances(self, x: torch.Tensor, c: _Candidates) -> torch.Tensor:
        colors, masks = self._single_layer(c)
        return ops.candidate_distances(x, colors, masks, c.backgrounds, backend=self.backend)   # (B, M·K)

    # ------------------------------------------------------------------------------------------------
    # Outputs for evaluation and pictures (never with mask noise)
    # ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def decompose(self, x: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
        """The decomposition of a batch, as upstream's ``transform`` sees it.

        Returns a dict with ``layers`` ``(L, B, C, H, W)`` and ``masks`` ``(L, B, 1, H, W)`` clamped to
        ``[0, 1]``, ``background`` ``(B, C, H, W)`` clamped (or None), ``occlusion`` ``(L, L, B)``,
        ``sprite_index`` ``(L, B)`` long (the chosen sprite per layer; the best candidate's sprite for
        single-layer models), ``selection`` ``(L, K, B)`` (None for single-layer models) and
        ``reconstruction`` ``(B, C, H, W)``.
        """
        self.check_input(x)
        c = self._candidates(x, False, None)
        if self.estimate_minimum:
            selection = self._select(x, c)
            colors, masks = self._place_selected(c, selection)
            background = None if c.backgrounds is None else c.backgrounds[0]
            sprite_index = selection.argmax(1)
        else:
            selection = None
            all_colors, all_masks = self._single_layer(c)
            best = self._candidate_distances(x, c).argmin(1)                     # (B,) index m·K + k
            K, B = self.n_sprites, x.shape[0]
            k, m = best % K, best // K
            idx = torch.arange(B, device=x.device)
            colors, masks = all_colors[k, idx][None], all_masks[k, idx][None]
            background = None if c.backgrounds is None else c.backgrounds[m, idx]
            sprite_index = k[None]
        colors, masks = colors.clamp(0, 1), masks.clamp(0, 1)
        if background is not None:
            background = background.clamp(0, 1)
        recon = ops.composite_layers(colors, masks, c.occlusion, background, backend=self.backend)
        return {"layers": colors, "masks": masks, "background": background, "occlusion": c.occlusion,
                "sprite_index": sprite_index, "selection": selection, "reconstruction": recon}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` reconstruction (single-layer models: the best of the K·M candidates)."""
        return self.decompose(x)["reconstruction"]

    def _label_map(self, parts: Mapping[str, Optional[torch.Tensor]], labels: torch.Tensor, top: int) -> torch.Tensor:
        """Composite constant label layers ``(L, B)`` with binarised masks and occlusion → ``(B, H, W)``."""
        masks = (parts["masks"] > 0.5).to(parts["masks"].dtype)
        occ = (parts["occlusion"] > 0.5).to(masks.dtype)
        label_layers = labels.to(masks.dtype)[:, :, None, None, None].expand_as(masks)
        out = ops.composite_layers(label_layers.contiguous(), masks, occ, backend=self.backend)
        return out[:, 0].clamp(0, top).long()

    @torch.no_grad()
    def semantic_labels(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` long: 0 for background, ``k + 1`` where sprite k is visible."""
        parts = self.decompose(x)
        return self._label_map(parts, parts["sprite_index"] + 1, self.n_sprites)

    @torch.no_grad()
    def instance_labels(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` long: 0 for background, ``l + 1`` where layer l is visible."""
        parts = self.decompose(x)
        L, B = parts["sprite_index"].shape
        layer_ids = torch.arange(1, L + 1, device=x.device)[:, None].expand(L, B)
        return self._label_map(parts, layer_ids, L)

    # ------------------------------------------------------------------------------------------------
    # Sprite reassignment
    # ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def cluster_proportions(self, out: ModelOutput) -> torch.Tensor:
        """How often each sprite was chosen in a batch.

        Returns ``(L, K)`` for multi-layer models (mean of the selection over images; upstream checks
        one random layer's row) and ``(K,)`` for single-layer ones (share of images whose best candidate
        uses each sprite, summed over backgrounds).
        """
        if out.selection is not None:
            return out.selection.mean(2)
        best = out.distances.argmin(1) % self.n_sprites
        # A scatter rather than bincount, which reads the largest index back to size its output.
        ones = torch.ones_like(best, dtype=out.distances.dtype)
        counts = out.distances.new_zeros(self.n_sprites).scatter_add_(0, best, ones)
        return counts / max(best.numel(), 1)

    @torch.no_grad()
    def reassign_empty_clusters(self, proportions: torch.Tensor,
                                optimizer: Optional[torch.optim.Optimizer] = None) -> tuple[list[int], int]:
        """Restart sprites used less than the threshold from the most used one (upstream's rule).

        Args:
            proportions: ``(K,)`` usage of each sprite (with the empty sprite last when present; then the
                others are normalised by their maximum, as upstream does).
            optimizer: the Adam optimizer, whose moments are copied along (masks and heads, as upstream).

        Returns:
            The reassigned sprite indices and the index they were copied from.
        """
        if not self.reassign_cluster or self.are_sprites_frozen:
            return [], 0
        proportions = torch.as_tensor(proportions, dtype=torch.float64).flatten()
        if proportions.numel() != self.n_sprites:
            raise ValueError(f"proportions must have {self.n_sprites} entries, got {proportions.numel()}")
        if self.add_empty_sprite:
            proportions = proportions[:-1] / proportions[:-1].max().clamp_min(1e-12)
        idx = int(proportions.argmax())
        reassigned = [i for i in range(len(proportions)) if proportions[i] < self.empty_cluster_threshold]
        for i in reassigned:
            self._restart_sprite(i, idx, optimizer)
        if reassigned:
            self._restart_sprite(idx, idx, optimizer)
        return reassigned, idx

    def _restart_sprite(self, i: int, j: int, optimizer: Optional[torch.optim.Optimizer]) -> None:
        src = self.prototype_params[j].detach().clone()
        self.prototype_params[i] = src + torch.randn_like(src) * REASSIGN_NOISE_SCALE
        self.mask_params[i] = self.mask_params[j]
        L, K = self.n_objects, self.n_sprites
        for layer in range(L):
            self.sprite_tsf.copy_head(layer * K + i, layer * K + j)
        if optimizer is None:
            return
        # Upstream copies the Adam moments of the masks and of the sprite's heads (not the prototypes').
        for param in [self.mask_params]:
            _copy_moments(optimizer, param, [(i, j)])
        pairs = [(layer * K + i, layer * K + j) for layer in range(L)]
        for head in self.sprite_tsf.heads.values():
            for param in list(head.weights) + list(head.biases):
                _copy_moments(optimizer, param, pairs)


def _follow_loaded_epoch(model: DTISprites, incompatible_keys: object) -> None:
    # A loaded state brings its epoch counter: re-derive the curriculum and freeze state from it.
    model.set_epoch(int(model.cur_epoch))


def _copy_moments(optimizer: torch.optim.Optimizer, param: torch.Tensor, pairs: list[tuple[int, int]]) -> None:
    state = optimizer.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq", "square_avg"):
        if key in state:
            for dst, src in pairs:
                state[key][dst] = state[key][src]


def build_model(cfg: Mapping[str, Any], img_size: Sequence[int], n_channels: int,
                init_images: Optional[torch.Tensor] = None) -> DTISprites:
    """Build a :class:`DTISprites` from a validated config (see :func:`dtifast.config.load_config`).

    Args:
        cfg: full config (with a ``model`` section) or the ``model`` section itself.
        img_size: ``(H, W)``; n_channels: C.
        init_images: dataset images ``(N, C, H, W)`` for the ``sample``/``mean`` inits.
    """
    model_cfg = cfg["model"] if "model" in cfg else cfg
    return DTISprites(model_cfg, img_size, n_channels, init_images)
