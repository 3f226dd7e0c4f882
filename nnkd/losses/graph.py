"""Region-graph distillation (REACT-KD's L_graph), docs/methods.md.

Nodes are the connected regions of every foreground label of the segmentation target,
nearest-downsampled to the chosen encoder stage's grid; a node's feature is the masked mean of
the stage's feature map over its region (with gradient). Student nodes go through a learnable
``Linear(student width -> teacher width)``; node features are L2-normalised. Student and
teacher graphs are matched softly by entropic OT (:func:`nnkd.ops.sinkhorn.sinkhorn`, cost
``1 - s_i . t_j``, the plan keeps its gradient), ``P = diag(pi 1)^-1 pi``, and::

    node = MSE(X_s, P X_t)
    edge = MSE(S_s, offdiag(P S_t P^T) + I)       S = X X^T
    gw   = MSE(D_s, P D_t P^T)                    D = max(0, 1 - S)

Each MSE is taken over one graph's valid entries, then averaged over the patches with at
least two nodes on both sides. Equal student and teacher features give zero up to the
entropic blur of the plan (``~exp(-(1 - cos)/eps)`` between distinct nodes).

Return convention: ``{"node", "edge", "gw"}`` (already weighted; they sum to the loss) plus
``"n_skipped"``, a detached counter. **Keys starting with ``n_`` are counters, not loss
terms**: the trainer logs them and does not add them to the loss.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nnkd.errors import NNKDError
from nnkd.losses.registry import check_teacher_weights, register_loss, teacher_weight_vector, widths_at
from nnkd.ops.components import regions
from nnkd.ops.sinkhorn import sinkhorn


def nearest_downsample(seg: Tensor, size: Sequence[int]) -> Tensor:
    """``F.interpolate(seg, size, mode="nearest")`` for an integer ``(B, C, *S)`` map, gathering
    only the sampled voxels (no float copy of the full-resolution target)."""
    d = len(size)
    index = []
    for axis, out in enumerate(size):
        scale = torch.tensor(float(seg.shape[2 + axis]), dtype=torch.float32) / out  # float32, as torch computes it
        src = (torch.arange(out, dtype=torch.float32) * scale).floor().long().clamp_max(seg.shape[2 + axis] - 1)
        index.append(src.to(seg.device).view([-1 if i == axis else 1 for i in range(d)]))
    return seg[(slice(None), slice(None), *index)]


def region_index(seg: Tensor, size: Sequence[int]) -> Tuple[Tensor, Tensor, Tensor]:
    """Regions of ``seg`` ``(B, 1, *S)`` (label map, 0 = background) on the grid ``size``.

    Returns :func:`nnkd.ops.components.compact_ids`'s ``(index, batch_of, count)``; ``index``
    is ``(B, *size)`` with -1 on background.
    """
    if seg.ndim == len(size) + 1:
        seg = seg[:, None]
    return regions(nearest_downsample(seg, size)[:, 0])


#: regions per image up to which node features are one batched matmul with region-mean weights
#: (a few ms less than a scatter over every voxel and channel); beyond it, a scatter (the weight
#: matrix grows with the number of regions)
MATMUL_MAX_NODES = 32


def _local_index(index: Tensor, count: Tensor, n: int) -> Tensor:
    """``(B, V)``: region number within its image, background -> the dummy slot ``n``."""
    b = index.shape[0]
    index = index.reshape(b, -1)
    local = index - (torch.cumsum(count, 0) - count)[:, None]
    return torch.where(index < 0, n, local)


def region_mean_weights(index: Tensor, count: Tensor, dtype: torch.dtype = torch.float32) -> Optional[Tensor]:
    """``(B, V, N)`` weights ``1/|region|`` (0 elsewhere): ``feat (B, C, V) @ W`` are the node means.

    ``None`` when an image has more than :data:`MATMUL_MAX_NODES` regions. Computed once per
    region index, shared by every feature map on that grid (student and teachers).
    """
    b = index.shape[0]
    n = max(int(count.max()) if b else 0, 1)
    if n > MATMUL_MAX_NODES:
        return None
    w = F.one_hot(_local_index(index, count, n), n + 1)[..., :n].to(dtype)
    return w / w.sum(1, keepdim=True).clamp_min(1)


def node_features(feat: Tensor, index: Tensor, count: Tensor,
                  weights: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Masked mean of ``feat`` ``(B, C, *S)`` over each region of ``index`` ``(B, *S)``.

    ``index``/``count`` as from :func:`region_index` (regions numbered image by image);
    ``weights``: :func:`region_mean_weights` of them, if already computed.
    Returns padded node features ``(B, N, C)`` (N = max regions per image, at least 1; zero
    rows for padding) and the valid-node mask ``(B, N)``.
    """
    b, c = feat.shape[:2]
    # with precomputed weights the node count is their width: no device -> host read of count.max()
    n = weights.shape[2] if weights is not None else max(int(count.max()) if b else 0, 1)
    mask = torch.arange(n, device=feat.device)[None] < count[:, None]
    if weights is None and n <= MATMUL_MAX_NODES:
        weights = region_mean_weights(index, count, feat.dtype)
    if weights is not None:
        return torch.bmm(feat.reshape(b, c, -1), weights.to(feat.dtype)).transpose(1, 2), mask
    local = _local_index(index, count, n)
    sums = feat.new_zeros(b, c, n + 1).scatter_add(2, local[:, None].expand(b, c, -1), feat.reshape(b, c, -1))
    sizes = feat.new_zeros(b, n + 1).scatter_add(1, local, feat.new_ones(()).expand(local.shape))
    x = (sums / sizes.clamp_min(1)[:, None])[..., :n].transpose(1, 2)
    return x, mask


def graph_terms(xs: Tensor, xt: Tensor, mask_s: Tensor, mask_t: Tensor, eps: float = 0.05, iters: int = 100,
                raw_plan: bool = False, width: Optional[Tensor] = None) -> Tensor:
    """Per-graph ``(node, edge, gw)`` MSEs, ``(G, 3)``.

    xs ``(G, N, C)``, xt ``(G, M, C)``: L2-normalised node features (padded); masks ``(G, N)``,
    ``(G, M)``. ``raw_plan`` uses the raw plan ``pi`` instead of ``P`` in the edge and gw terms
    (the official code; not zero for identical graphs). ``width`` ``(G,)``: the true feature
    width of each graph when C includes zero padding (default C).
    """
    # rows of xs, xt have norm <= 1 (normalised, or zero padding), so the cost lies in [0, 2]
    pi = sinkhorn(1 - xs @ xt.transpose(1, 2), mask_s, mask_t, eps, iters, cost_bound=2.0)
    p = pi / pi.sum(-1, keepdim=True).clamp_min(torch.finfo(pi.dtype).tiny)  # padded rows stay 0
    q = pi if raw_plan else p
    s_s, s_t = xs @ xs.transpose(1, 2), xt @ xt.transpose(1, 2)
    eye = torch.eye(xs.shape[1], dtype=xs.dtype, device=xs.device)
    edge_target = (q @ s_t @ q.transpose(1, 2)) * (1 - eye) + eye
    gw_target = q @ F.relu(1 - s_t) @ q.transpose(1, 2)

    pair = (mask_s[:, :, None] & mask_s[:, None, :]).to(xs.dtype)
    n = mask_s.sum(1).clamp_min(1).to(xs.dtype)
    width = xs.shape[-1] if width is None else width.to(xs.dtype)
    node = (((xs - p @ xt) ** 2).sum(-1) * mask_s).sum(1) / (n * width)
    edge = (((s_s - edge_target) ** 2) * pair).sum((1, 2)) / n**2
    gw = (((F.relu(1 - s_s) - gw_target) ** 2) * pair).sum((1, 2)) / n**2
    return torch.stack([node, edge, gw], 1)


def _pad(x: Tensor, *size: int) -> Tensor:
    """Zero-pad the trailing dims of ``x`` up to ``size`` (for bool masks: False)."""
    pad = []
    for have, want in zip(reversed(x.shape[-len(size):]), reversed(size)):
        pad += [0, want - have]
    return F.pad(x, pad)


def _fp32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


@register_loss("region_graph")
class RegionGraphKD(nn.Module):
    """REACT-KD region-graph distillation; see the module docstring.

    stage: encoder stage (index into ``features``; default -3). nnU-Net pools until the
        bottleneck is ~4-8 voxels per axis, so the bottleneck drops small tumours under
        nearest downsampling; the third-deepest stage is 4x finer (~16-32 voxels per axis in
        2D and 3D plans alike, stride 8 in a default 6-stage 3d_fullres).
    fusion: ``"loss"`` averages the teachers' graph losses (one projection per teacher);
        ``"features"`` averages the teachers' normalised node features first (equal teacher
        widths and identical teacher regions required). Both averages are weighted by
        ``teacher_weights`` (the plan's ``teachers[i].weight``; equal when not given).
    plan_normalisation: ``"row"`` (``P`` everywhere) or ``"raw"`` (official code: raw ``pi``
        in the edge and gw terms).
    """

    TERMS = ("node", "edge", "gw")

    def __init__(self, student_widths: Sequence[int], teacher_widths: Sequence[Sequence[int]], stage: int = -3,
                 fusion: str = "loss", plan_normalisation: str = "row", eps: float = 0.05, iters: int = 100,
                 w_node: float = 1.0, w_edge: float = 1.0, w_gw: float = 1.0,
                 teacher_weights: Optional[Sequence[float]] = None):
        super().__init__()
        self.teacher_weights = check_teacher_weights("region_graph", teacher_weights, teacher_widths)
        if fusion not in ("loss", "features"):
            raise NNKDError(f"loss 'region_graph': fusion must be 'loss' or 'features', got {fusion!r}")
        if plan_normalisation not in ("row", "raw"):
            raise NNKDError(f"loss 'region_graph': plan_normalisation must be 'row' or 'raw', got "
                            f"{plan_normalisation!r}")
        if eps <= 0 or iters < 1:
            raise NNKDError(f"loss 'region_graph': need eps > 0 and iters >= 1, got eps={eps}, iters={iters}")
        cs, cts = widths_at("region_graph", student_widths, teacher_widths, stage)
        if fusion == "features" and len(set(cts)) > 1:
            raise NNKDError(f"loss 'region_graph': fusion='features' needs equal teacher widths at stage {stage}, "
                            f"got {cts} (use fusion='loss')")
        self.stage, self.fusion, self.raw_plan = stage, fusion, plan_normalisation == "raw"
        self.eps, self.iters, self.n_teachers = float(eps), int(iters), len(cts)
        self.register_buffer("weights", torch.tensor([w_node, w_edge, w_gw], dtype=torch.float32), persistent=False)
        self.projections = nn.ModuleList(
            nn.Linear(cs, ct, bias=False) for ct in (cts[:1] if fusion == "features" else cts))

    def _zero(self, fs: Tensor) -> dict:
        zero = fs.sum() * 0 + sum(p.sum() for p in self.parameters()) * 0
        return {**{k: zero for k in self.TERMS}, "n_skipped": zero.new_zeros(()).detach()}

    def forward(self, student, teachers, batch) -> dict:
        fs = student.features[self.stage]
        # exp(-cost / 0.05) over 100 Sinkhorn iterations needs float32, whatever autocast says
        with torch.autocast(fs.device.type, enabled=False):
            return self._forward(_fp32(fs), teachers, batch)

    def _forward(self, fs: Tensor, teachers, batch) -> dict:
        if len(teachers) == 0:
            return self._zero(fs)
        if len(teachers) != self.n_teachers:
            raise NNKDError(f"loss 'region_graph' was built for {self.n_teachers} teacher(s) (teacher_widths) "
                            f"but got {len(teachers)}")
        seg = batch["seg_target"]
        t_segs = batch.get("teacher_seg_target")
        t_segs = [seg] * len(teachers) if t_segs is None else t_segs
        regions = {}  # (target tensor, grid) -> region_index(...): shared nodes are found once

        def nodes(feat, target):  # -> (region index, node features, mask)
            key = (id(target), tuple(feat.shape[2:]))
            if key not in regions:
                index, _, count = region_index(target, feat.shape[2:])
                regions[key] = index, count, region_mean_weights(index, count, feat.dtype)
            index, count, weights = regions[key]
            return (index, *node_features(feat, index, count, weights))

        _, xs_raw, mask_s = nodes(fs, seg)
        t_nodes = [nodes(_fp32(t.features[self.stage].detach()), ts) for t, ts in zip(teachers, t_segs)]
        if self.fusion == "features":
            for k, (index, _, _) in enumerate(t_nodes[1:], 1):
                if not torch.equal(index, t_nodes[0][0]):
                    raise NNKDError(f"loss 'region_graph': fusion='features' needs the teachers to share their "
                                    f"regions (teacher_seg_target and stage grid), but teacher {k} differs from "
                                    f"teacher 0 (use fusion='loss')")
            tw = teacher_weight_vector("region_graph", self.teacher_weights, len(t_nodes), fs)
            fused = torch.einsum("t,t...->...", tw, torch.stack([F.normalize(x, dim=-1) for _, x, _ in t_nodes]))
            xts = [(F.normalize(fused, dim=-1), t_nodes[0][2])]
        else:
            xts = [(F.normalize(x, dim=-1), m) for _, x, m in t_nodes]

        # All teachers' graphs in one batch of T*B graphs, padded to common node counts and
        # widths (zero channels change no dot product; ``width`` keeps the node MSE per channel).
        b, n_t = fs.shape[0], len(xts)
        xss = [F.normalize(proj(xs_raw), dim=-1) for proj in self.projections]
        m, c = max(x.shape[1] for x, _ in xts), max(x.shape[2] for x in xss)
        xs = torch.cat([_pad(x, x.shape[1], c) for x in xss])
        xt = torch.cat([_pad(x, m, c) for x, _ in xts])
        ms, mt = mask_s.repeat(n_t, 1), torch.cat([_pad(k, m) for _, k in xts])
        width = torch.tensor([x.shape[2] for x in xss], device=fs.device).repeat_interleave(b)
        per_graph = graph_terms(xs, xt, ms, mt, self.eps, self.iters, self.raw_plan, width).view(n_t, b, 3)
        ok = ((ms.sum(1) >= 2) & (mt.sum(1) >= 2)).view(n_t, b)
        per_teacher = (per_graph * ok[..., None]).sum(1) / ok.sum(1, keepdim=True).clamp_min(1)  # (n_t, 3)
        total = teacher_weight_vector("region_graph", None if self.fusion == "features" else self.teacher_weights,
                                      n_t, per_teacher) @ per_teacher
        out = dict(zip(self.TERMS, (total * self.weights.to(total.dtype)).unbind()))
        out["n_skipped"] = ((~ok).sum() / n_t).detach().float()
        return out
