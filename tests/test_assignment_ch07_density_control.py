"""Assignment ch07_density_control (npga.book.assignments): typical wrong answers fail with the
message that names them.

tests/test_assignments.py checks, for every master, that the solutions score full marks, the
untouched student edition scores zero and no solution line survives; this file checks that the
mistakes each question's tests look for are the ones reported.
"""


import pytest


NAME = "ch07_density_control"
pytestmark = pytest.mark.xdist_group(NAME)  # one worker builds this master (--dist loadgroup)


WRONG = {
    # summed over the views instead of averaged
    "my_mean_grad": (
        "def my_mean_grad(grads_px, radii, width, height, mode='3dgs'):\n"
        "    C = grads_px.shape[1]\n"
        "    n = (grads_px * torch.tensor([width / 2, height / 2]) * C).norm(dim=-1)\n"
        "    c = (radii > 0) if mode == '3dgs' else (radii > 0) & (n > 0)\n"
        "    return (n * c).sum(dim=(0, 1))\n"
    ),
    # a Gaussian's size taken as its smallest scale
    "my_clone_split": (
        "def my_clone_split(mean_grad, log_scales, grad_threshold, percent_dense, scene_extent):\n"
        "    grow = mean_grad >= grad_threshold\n"
        "    small = log_scales.exp().min(dim=-1).values <= percent_dense * scene_extent\n"
        "    return grow & small, grow & ~small\n"
    ),
    # the samples not rotated into the Gaussian's axes
    "my_split": (
        "def my_split(means, quats, log_scales, eps, factor=1.6):\n"
        "    m = means + eps * log_scales.exp()\n"
        "    return m.reshape(-1, 3), (log_scales - math.log(factor)).repeat(eps.shape[0], 1)\n"
    ),
    # the opacity logit compared with the opacity threshold
    "my_prune_mask": (
        "def my_prune_mask(opacity_logits, log_scales, max_radii, step, cfg, scene_extent):\n"
        "    m = opacity_logits < cfg.prune_opacity\n"
        "    if step >= cfg.prune_big_from_step:\n"
        "        m = m | (log_scales.exp().max(-1).values > cfg.prune_world_scale * scene_extent)\n"
        "        m = m | (max_radii > cfg.prune_screen_size)\n"
        "    return m\n"
    ),
}

WRONG_TOO = {
    # the pixel gradient, not taken to NDC
    "my_mean_grad": (
        "def my_mean_grad(grads_px, radii, width, height, mode='3dgs'):\n"
        "    n = grads_px.norm(dim=-1)\n"
        "    c = (radii > 0) if mode == '3dgs' else (radii > 0) & (n > 0)\n"
        "    return (n * c).sum(dim=(0, 1)) / c.sum(dim=(0, 1)).clamp_min(1)\n"
    ),
    # clone the large ones, split the small ones
    "my_clone_split": (
        "def my_clone_split(mean_grad, log_scales, grad_threshold, percent_dense, scene_extent):\n"
        "    grow = mean_grad >= grad_threshold\n"
        "    large = log_scales.exp().max(dim=-1).values > percent_dense * scene_extent\n"
        "    return grow & large, grow & ~large\n"
    ),
    # the log-scale divided by 1.6 instead of the scale
    "my_split": (
        "def my_split(means, quats, log_scales, eps, factor=1.6):\n"
        "    R = quat_to_rotmat(quats)\n"
        "    m = means + torch.einsum('sij,ksj->ksi', R, eps * log_scales.exp())\n"
        "    return m.reshape(-1, 3), (log_scales / factor).repeat(eps.shape[0], 1)\n"
    ),
    # big Gaussians pruned from the first round on
    "my_prune_mask": (
        "def my_prune_mask(opacity_logits, log_scales, max_radii, step, cfg, scene_extent):\n"
        "    m = torch.sigmoid(opacity_logits) < cfg.prune_opacity\n"
        "    m = m | (log_scales.exp().max(-1).values > cfg.prune_world_scale * scene_extent)\n"
        "    return m | (max_radii > cfg.prune_screen_size)\n"
    ),
}


@pytest.mark.slow
def test_density_control_mistakes_are_named(grade_answers):
    res = grade_answers(NAME, WRONG)
    assert res["q1"][0] == 0 and "you summed over the views" in res["q1"][2], res["q1"][2]
    assert res["q2"][0] == 0 and "by its smallest scale" in res["q2"][2], res["q2"][2]
    assert res["q3"][0] == 0 and "you forgot the rotation" in res["q3"][2], res["q3"][2]
    assert res["q4"][0] == 0 and "compared the opacity logit" in res["q4"][2], res["q4"][2]

    res = grade_answers(NAME, WRONG_TOO, "wrong_too")
    assert res["q1"][0] == 0 and "averaged the gradient in pixels" in res["q1"][2], res["q1"][2]
    assert res["q2"][0] == 0 and "clone and split are swapped" in res["q2"][2], res["q2"][2]
    assert res["q3"][0] == 0 and "divided the log-scale by factor" in res["q3"][2], res["q3"][2]
    assert res["q4"][0] == 0 and "only transparent Gaussians are pruned" in res["q4"][2], res["q4"][2]
