import numpy as np
import pytest
import torch
from scipy import ndimage

from nnkd.errors import NNKDError
from nnkd.hooks import build_loss
from nnkd.losses.graph import graph_terms, node_features, region_index
from nnkd.nets.outputs import NetOutputs
from nnkd.ops.sinkhorn import sinkhorn


# ---------------------------------------------------------------- Sinkhorn
def _naive_sinkhorn(cost, eps, iters):
    k = torch.exp(-cost / eps)
    a = torch.full((cost.shape[0],), 1 / cost.shape[0], dtype=cost.dtype)
    b = torch.full((cost.shape[1],), 1 / cost.shape[1], dtype=cost.dtype)
    v = torch.ones_like(b)
    for _ in range(iters):
        u = a / (k @ v)
        v = b / (k.T @ u)
    return u[:, None] * k * v[None]


def _padded_costs(sizes, n=4, m=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(len(sizes), n, m, generator=g, dtype=torch.float64) * 2
    mx = torch.tensor([[i < a for i in range(n)] for a, _ in sizes])
    my = torch.tensor([[j < b for j in range(m)] for _, b in sizes])
    return cost, mx, my


def test_sinkhorn_equals_naive_on_well_conditioned_case():
    cost, mx, my = _padded_costs([(4, 4), (4, 4)])
    pi = sinkhorn(cost, mx, my, eps=0.5, iters=30)
    for gi in range(2):
        torch.testing.assert_close(pi[gi], _naive_sinkhorn(cost[gi], 0.5, 30))


def test_sinkhorn_padding_and_marginals():
    sizes = [(3, 4), (2, 2), (4, 1), (0, 0), (1, 3)]
    cost, mx, my = _padded_costs(sizes)
    # converged case (eps=0.2), then the loss's defaults (eps=0.05, 100 iterations: slower
    # convergence for near-permutation plans, so rows hold to 1e-3 only)
    for eps, iters, row_tol in [(0.2, 200, 1e-9), (0.05, 100, 1e-3)]:
        pi = sinkhorn(cost, mx, my, eps=eps, iters=iters)
        assert torch.isfinite(pi).all()
        for gi, (a, b) in enumerate(sizes):
            block = pi[gi, :a, :b]
            assert pi[gi].sum().item() == pytest.approx(block.sum().item(), abs=1e-12)  # nothing on padding
            if a == 0:
                continue
            torch.testing.assert_close(block.sum(1), torch.full((a,), 1 / a, dtype=pi.dtype), atol=row_tol, rtol=0)
            torch.testing.assert_close(block.sum(0), torch.full((b,), 1 / b, dtype=pi.dtype), atol=1e-9, rtol=0)
            # the padded problem is the unpadded one
            alone = sinkhorn(cost[gi:gi + 1, :a, :b], mx[gi:gi + 1, :a], my[gi:gi + 1, :b], eps=eps, iters=iters)
            torch.testing.assert_close(block, alone[0])


def test_sinkhorn_gradient_matches_finite_differences():
    cost, mx, my = _padded_costs([(3, 2), (2, 3)], n=3, m=3, seed=1)
    cost.requires_grad_(True)
    weights = torch.rand(2, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda c: (sinkhorn(c, mx, my, eps=0.5, iters=10) * weights).sum(), (cost,))


# ---------------------------------------------------------------- fixtures
def _seg2d():
    """(2, 1, 16, 16): image 0 has 4 regions (two per label), image 1 has 3."""
    seg = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    seg[0, 0, 1:5, 1:5] = 1
    seg[0, 0, 10:14, 2:6] = 1
    seg[0, 0, 2:6, 10:14] = 2
    seg[0, 0, 10:14, 10:15] = 2
    seg[1, 0, 0:8, 0:8] = 1
    seg[1, 0, 8:16, 8:16] = 2  # touches the label-1 block diagonally: still its own node
    seg[1, 0, 12:16, 0:4] = 1
    return seg


def _seg(dims):
    seg = _seg2d()
    return seg if dims == 2 else seg[:, :, None].expand(-1, -1, 4, -1, -1).contiguous()


def _net(feat):
    return NetOutputs(seg=None, logits=None, features=[feat])


def _identity_loss(width, **kw):
    loss = build_loss("region_graph", student_widths=[width], teacher_widths=[[width]], stage=-1, **kw)
    with torch.no_grad():
        for p in loss.projections:
            p.weight.copy_(torch.eye(width))
    return loss


def _graph_total(out):
    return sum(v for k, v in out.items() if not k.startswith("n_"))


# ---------------------------------------------------------------- nodes
def test_node_features_match_scipy_masked_means():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lab = torch.from_numpy(rng.integers(0, 3, size=(2, 1, 9, 11)) * (rng.random((2, 1, 9, 11)) < 0.35))
    feat = torch.randn(2, 5, 9, 11)
    index, _, count = region_index(lab, (9, 11))
    x, mask = node_features(feat, index, count)
    for b in range(2):
        expected = []
        for v in (1, 2):
            comp, n = ndimage.label(lab[b, 0].numpy() == v, structure=np.ones((3, 3)))
            expected += [feat[b][:, torch.from_numpy(comp == i)].mean(1) for i in range(1, n + 1)]
        got = x[b][mask[b]]
        assert len(got) == len(expected) > 2
        order = lambda rows: sorted(rows, key=lambda r: r[0].item())  # noqa: E731
        torch.testing.assert_close(torch.stack(order(list(got))), torch.stack(order(expected)))
    assert (x[~mask] == 0).all()


# ---------------------------------------------------------------- loss properties
@pytest.mark.parametrize("dims", [2, 3])
def test_zero_for_equal_features_and_raw_plan_is_not(dims):
    torch.manual_seed(1)
    seg = _seg(dims)
    f = torch.randn(2, 32, *seg.shape[2:])
    out = _identity_loss(32)(_net(f), [_net(f.clone())], {"seg_target": seg})
    assert set(out) == {"node", "edge", "gw", "n_skipped"}
    for k in ("node", "edge", "gw"):
        assert 0 <= out[k].item() < 1e-8, k
    assert out["n_skipped"].item() == 0
    # official code: raw pi (rows sum to 1/N) in edge and gw shrinks the teacher structure
    raw = _identity_loss(32, plan_normalisation="raw")(_net(f), [_net(f.clone())], {"seg_target": seg})
    assert raw["node"].item() < 1e-8 and raw["edge"].item() > 1e-3 and raw["gw"].item() > 1e-2


@pytest.mark.parametrize("dims", [2, 3])
def test_positive_and_gradients_reach_student_and_projection_not_teacher(dims):
    torch.manual_seed(2)
    seg = _seg(dims)
    grid = tuple(s // 2 for s in seg.shape[2:])  # the stage is coarser than the target
    fs = torch.randn(2, 8, *grid, requires_grad=True)
    ft = torch.randn(2, 16, *grid, requires_grad=True)
    loss = build_loss("region_graph", student_widths=[4, 8], teacher_widths=[[4, 16]], stage=-1)
    out = loss(NetOutputs(None, None, [None, fs]), [NetOutputs(None, None, [None, ft])], {"seg_target": seg})
    assert all(out[k].item() > 1e-4 for k in ("node", "edge", "gw"))
    _graph_total(out).backward()
    assert fs.grad.abs().sum() > 0 and torch.isfinite(fs.grad).all()
    assert loss.projections[0].weight.grad.abs().sum() > 0
    assert ft.grad is None
    # gradient only where there are regions (masked means)
    lab = torch.nn.functional.interpolate(seg.float(), size=grid, mode="nearest")
    assert (fs.grad.abs().sum(1, keepdim=True)[lab == 0] == 0).all()


def test_invariant_to_node_order():
    torch.manual_seed(3)
    xs = torch.nn.functional.normalize(torch.randn(2, 5, 8, dtype=torch.float64), dim=-1)
    xt = torch.nn.functional.normalize(torch.randn(2, 4, 8, dtype=torch.float64), dim=-1)
    ms = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]).bool()
    mt = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()
    ref = graph_terms(xs, xt, ms, mt)
    assert (ref > 1e-3).all()
    ps, pt = torch.tensor([2, 0, 3, 1, 4]), torch.tensor([1, 2, 0, 3])
    torch.testing.assert_close(graph_terms(xs[:, ps], xt[:, pt], ms[:, ps], mt[:, pt]), ref)


def test_invariant_to_region_relabelling_by_flip():
    torch.manual_seed(4)
    seg, fs, ft = _seg2d(), torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    loss = _identity_loss(8)
    ref = loss(_net(fs), [_net(ft)], {"seg_target": seg})
    flipped = loss(_net(fs.flip(-1)), [_net(ft.flip(-1))], {"seg_target": seg.flip(-1)})
    for k in ("node", "edge", "gw"):
        torch.testing.assert_close(flipped[k], ref[k])


def test_fewer_than_two_nodes_gives_connected_zero_and_is_counted():
    seg = torch.zeros(3, 1, 8, 8, dtype=torch.long)
    seg[0, 0, 2:5, 2:5] = 1  # one node; image 1 has none
    seg[2, 0, 0:2, 0:2], seg[2, 0, 5:8, 5:8] = 1, 2  # two nodes: the only graph that counts
    fs = torch.randn(3, 4, 8, 8, requires_grad=True)
    ft = torch.randn(3, 4, 8, 8)
    loss = build_loss("region_graph", student_widths=[4], teacher_widths=[[4]], stage=-1)
    out = loss(_net(fs), [_net(ft)], {"seg_target": seg})
    assert out["n_skipped"].item() == 2 and not out["n_skipped"].requires_grad
    only = loss(_net(fs[2:]), [_net(ft[2:])], {"seg_target": seg[2:]})
    for k in ("node", "edge", "gw"):  # skipped patches do not dilute the mean
        torch.testing.assert_close(out[k], only[k])

    out = loss(_net(fs[:2]), [_net(ft[:2])], {"seg_target": seg[:2]})
    total = _graph_total(out)
    assert total.item() == 0 and total.requires_grad and out["n_skipped"].item() == 2
    total.backward()
    assert fs.grad is not None and torch.isfinite(fs.grad).all() and loss.projections[0].weight.grad is not None


def test_no_foreground_at_all():
    fs = torch.randn(2, 4, 6, 6, requires_grad=True)
    loss = build_loss("region_graph", student_widths=[4], teacher_widths=[[4]], stage=-1)
    out = loss(_net(fs), [_net(torch.randn(2, 4, 6, 6))], {"seg_target": torch.zeros(2, 1, 12, 12, dtype=torch.long)})
    _graph_total(out).backward()
    assert out["n_skipped"].item() == 2 and torch.isfinite(fs.grad).all()


def test_unpaired_teacher_regions_and_grid():
    torch.manual_seed(5)
    seg = _seg2d()
    t_seg = seg.flip(-2).clone()
    t_seg[1, 0, 0:3, 12:16] = 1  # the teacher sees one more region
    fs, ft = torch.randn(2, 8, 16, 16, requires_grad=True), torch.randn(2, 8, 8, 8)
    out = _identity_loss(8)(_net(fs), [_net(ft)], {"seg_target": seg, "teacher_seg_target": [t_seg]})
    assert all(torch.isfinite(v) and v.item() > 0 for k, v in out.items() if k != "n_skipped")
    _graph_total(out).backward()
    assert fs.grad.abs().sum() > 0


def test_two_teachers_fusion_modes():
    torch.manual_seed(6)
    seg, fs, ft = _seg2d(), torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    batch = {"seg_target": seg}
    single = _identity_loss(8)(_net(fs), [_net(ft)], batch)
    two = build_loss("region_graph", student_widths=[8], teacher_widths=[[8], [8]], stage=-1)
    fused = build_loss("region_graph", student_widths=[8], teacher_widths=[[8], [8]], stage=-1, fusion="features")
    for loss in (two, fused):
        with torch.no_grad():
            for p in loss.projections:
                p.weight.copy_(torch.eye(8))
    for loss in (two, fused):  # identical teachers reduce to the single-teacher loss
        out = loss(_net(fs), [_net(ft), _net(ft.clone())], batch)
        for k in ("node", "edge", "gw"):
            torch.testing.assert_close(out[k], single[k])
    ft2 = torch.randn(2, 8, 16, 16)
    a = _identity_loss(8)(_net(fs), [_net(ft2)], batch)
    out = two(_net(fs), [_net(ft), _net(ft2)], batch)
    for k in ("node", "edge", "gw"):
        torch.testing.assert_close(out[k], (single[k] + a[k]) / 2)
    assert not torch.allclose(_graph_total(fused(_net(fs), [_net(ft), _net(ft2)], batch)), _graph_total(out))


def test_configuration_errors():
    with pytest.raises(NNKDError, match=r"fusion='features' needs equal teacher widths at stage -1, got \[8, 16\]"):
        build_loss("region_graph", student_widths=[8], teacher_widths=[[8], [16]], stage=-1, fusion="features")
    with pytest.raises(NNKDError, match="plan_normalisation must be 'row' or 'raw'"):
        build_loss("region_graph", student_widths=[8], teacher_widths=[[8]], plan_normalisation="rows")
    with pytest.raises(NNKDError, match="stage -3 does not exist"):
        build_loss("region_graph", student_widths=[8], teacher_widths=[[8]])
    fused = build_loss("region_graph", student_widths=[8], teacher_widths=[[8], [8]], stage=-1, fusion="features")
    seg, f = _seg2d(), torch.randn(2, 8, 16, 16)
    with pytest.raises(NNKDError, match="teacher 1 differs from teacher 0"):
        fused(_net(f), [_net(f), _net(f)], {"seg_target": seg, "teacher_seg_target": [seg, seg.flip(-1)]})
    with pytest.raises(NNKDError, match=r"built for 2 teacher\(s\)"):
        fused(_net(f), [_net(f)], {"seg_target": seg})


def test_weights_scale_terms():
    torch.manual_seed(7)
    seg, fs, ft = _seg2d(), torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 16)
    base = _identity_loss(8)(_net(fs), [_net(ft)], {"seg_target": seg})
    scaled = _identity_loss(8, w_node=2.0, w_edge=0.0, w_gw=0.5)(_net(fs), [_net(ft)], {"seg_target": seg})
    torch.testing.assert_close(scaled["node"], 2 * base["node"])
    torch.testing.assert_close(scaled["edge"], 0 * base["edge"])
    torch.testing.assert_close(scaled["gw"], 0.5 * base["gw"])


# ---------------------------------------------------------------- fast paths (same results as the reference paths)
@pytest.mark.parametrize("shape", [(3, 17, 19), (2, 6, 9, 11), (1, 1, 5)])
@pytest.mark.parametrize("density", [0.05, 0.4, 0.8])
def test_components_scipy_path_equals_max_pool_path_and_scipy_partition(shape, density):
    from nnkd.ops.components import _components_pool, connected_components

    rng = np.random.default_rng(len(shape) * 10 + int(density * 10))
    lab = torch.from_numpy(rng.integers(1, 4, size=shape) * (rng.random(shape) < density))
    ids = connected_components(lab)  # CPU: scipy.ndimage.label
    assert torch.equal(ids, _components_pool(lab))  # identical ids, not just the same partition
    for b in range(shape[0]):
        for v in (1, 2, 3):
            comp, n = ndimage.label(lab[b].numpy() == v, structure=np.ones((3,) * (len(shape) - 1)))
            for i in range(1, n + 1):  # every scipy region is one id, found nowhere else
                region = torch.from_numpy(comp == i)
                values = ids[b][region].unique()
                assert len(values) == 1 and (ids[b][~region] != values[0]).all()
    assert (ids[lab == 0] == 0).all()


def _graph_problem(seed=0, g=6, n=7, m=6, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(g, n, 16, generator=gen, dtype=dtype), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(g, m, 16, generator=gen, dtype=dtype), dim=-1)
    mx = torch.ones(g, n, dtype=torch.bool)
    my = torch.ones(g, m, dtype=torch.bool)
    mx[0, 5:], my[1, 3:] = False, False  # padding
    if g >= 6:
        mx[3], my[4] = False, False  # a graph without rows, one without columns
        mx[5, 1:], my[5, 1:] = False, False  # a single node on each side
    return x, y, mx, my


@pytest.mark.parametrize("eps,iters", [(0.05, 100), (0.5, 10), (0.02, 60)])
def test_sinkhorn_scaling_path_equals_log_domain_values_and_gradients(eps, iters):
    x, y, mx, my = _graph_problem()
    weights = torch.randn(*mx.shape, my.shape[1], generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    results = []
    for bound in (None, 2.0):  # None: log domain; 2.0 (cost 1 - cos): float64 scaling domain
        xs = x.clone().requires_grad_(True)
        pi = sinkhorn(1 - xs @ y.transpose(1, 2), mx, my, eps=eps, iters=iters, cost_bound=bound)
        (pi * weights).sum().backward()
        results.append((pi.detach(), xs.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-12)
    assert (results[1][0][3] == 0).all() and (results[1][0][4] == 0).all()


def test_sinkhorn_scaling_path_gradcheck_and_float32_accuracy():
    x, y, mx, my = _graph_problem(seed=1, g=3, n=4, m=3)
    mx[2, 1:] = False  # padding on both sides of every graph
    cost = (1 - x @ y.transpose(1, 2)).requires_grad_(True)
    weights = torch.rand(3, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert torch.autograd.gradcheck(lambda c: (sinkhorn(c, mx, my, eps=0.1, iters=20, cost_bound=2.0) * weights).sum(),
                                    (cost,))
    # float32 input: computed in float64 inside, so closer to the float64 reference than float32 log domain
    xs32 = x.float().requires_grad_(True)
    pi = sinkhorn(1 - xs32 @ y.float().transpose(1, 2), mx, my, eps=0.05, iters=100, cost_bound=2.0)
    ref = sinkhorn(1 - x @ y.transpose(1, 2), mx, my, eps=0.05, iters=100)
    assert pi.dtype == torch.float32
    torch.testing.assert_close(pi.double(), ref, rtol=1e-4, atol=1e-6)
    # outside the safe range (cost_bound / eps > 100) the log domain runs: still finite
    pi = sinkhorn(1 - xs32 @ y.float().transpose(1, 2), mx, my, eps=0.01, iters=50, cost_bound=2.0)
    assert torch.isfinite(pi).all()


@pytest.mark.parametrize("regions", [3, 40])  # matmul path (<= 32 regions per image) and scatter path
def test_node_features_matmul_and_scatter_paths_agree(regions, monkeypatch):
    import nnkd.losses.graph as graph

    gen = torch.Generator().manual_seed(regions)
    lab = torch.zeros(2, 1, 12, 40, dtype=torch.long)
    for r in range(regions):  # separated single-row blobs, alternating labels
        lab[:, 0, (r % 4) * 3, (r // 4) * 4:(r // 4) * 4 + 2] = 1 + r % 2
    lab[1, 0, :, 20:] = 0  # fewer regions in image 1
    feat = torch.randn(2, 5, 12, 40, generator=gen, dtype=torch.float64)
    index, _, count = region_index(lab, (12, 40))
    assert int(count.max()) == regions
    results = []
    for limit in (10_000, -1):  # matmul everywhere, scatter everywhere
        monkeypatch.setattr(graph, "MATMUL_MAX_NODES", limit)
        f = feat.clone().requires_grad_(True)
        x, mask = node_features(f, index, count)
        (x * torch.arange(x.numel(), dtype=x.dtype).view_as(x)).sum().backward()
        results.append((x.detach(), mask, f.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][2], results[1][2])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.parametrize("shape", [(4, 33, 29), (2, 7, 12, 10)])
def test_regions_and_boxes_cpu_paths_equal_reference_paths(shape):
    from nnkd.ops.components import (_boxes_torch, _components_pool, compact_ids, component_boxes, regions)

    rng = np.random.default_rng(len(shape))
    lab = torch.from_numpy(rng.integers(1, 3, size=shape) * (rng.random(shape) < 0.3))
    lab[1] = 0  # an image without regions
    index, batch_of, count = regions(lab)
    ref = compact_ids(_components_pool(lab))
    for got, want in zip((index, batch_of, count), ref):
        assert torch.equal(got, want)
    assert torch.equal(component_boxes(index, len(batch_of)), _boxes_torch(index, len(batch_of)))
    empty = regions(torch.zeros(shape, dtype=torch.long))
    assert empty[0].eq(-1).all() and empty[1].numel() == 0 and empty[2].eq(0).all()
    assert component_boxes(empty[0], 0).shape == (0, 2, len(shape) - 1)


def test_sinkhorn_scaling_path_torch_backend_equals_numpy_backend(monkeypatch):
    """Off the CPU the scaling-domain iterations run in torch; force that backend here and compare."""
    import nnkd.ops.sinkhorn as sk

    x, y, mx, my = _graph_problem(seed=4)
    weights = torch.randn(*mx.shape, my.shape[1], generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    results = []
    for backend in ("numpy", "torch"):
        if backend == "torch":
            monkeypatch.setattr(sk, "_backend", lambda *tensors: (torch, list(tensors)))
        xs = x.clone().requires_grad_(True)
        pi = sinkhorn(1 - xs @ y.transpose(1, 2), mx, my, eps=0.05, iters=40, cost_bound=2.0)
        (pi * weights).sum().backward()
        results.append((pi.detach(), xs.grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-12)
