"""Assignment 8 (the latent image, the screen-space CNN, masked PSNR, SSIM): typical mistakes are named.

Builds assignments/ch08_screen_space_cnn.ipynb with otter-grader, answers its student edition
with one deliberately wrong answer per question (two such submissions, so that eight mistakes are
checked), grades them and asserts that every question loses its points with the message that
names the mistake. tests/test_assignments.py checks the rest (full marks for the solutions, zero
for the untouched student edition, no solution line in the student edition).
"""


import pytest

from npga.book import assignments as asg

NAME = "ch08_screen_space_cnn"
pytestmark = pytest.mark.xdist_group(NAME)  # one worker builds this master (--dist loadgroup)
MASTER = asg.MASTERS / f"{NAME}.ipynb"

# The correct latent image with one thing changed (the first line is replaced by the caller).
_LATENT = (
    "def my_latent_image(colors, features, alphas):\n"
    "    values = torch.cat([colors, features], dim=-1)\n"
    "    a = alphas.clamp(max=0.999)\n"
    "    a = torch.where(a >= 1 / 255, a, torch.zeros_like(a))\n"
    "    a = a * (torch.cumprod(1 - a, dim=-1) > 1e-4).to(a.dtype).cumprod(dim=-1)  # STOP\n"
    "    t = torch.cumprod(torch.cat([torch.ones_like(a[..., :1]), 1 - a[..., :-1]], dim=-1), dim=-1)\n"
    "    return (a * t) @ values, 1 - torch.prod(1 - a, dim=-1, keepdim=True)\n"
)

_CNN = (
    "def my_cnn_forward(cnn, latent):\n"
    "    x = latent.permute(0, 3, 1, 2)\n"
    "    b = cnn.body\n"
    "    x = F.silu(F.conv2d(x, b[0].weight, b[0].bias, padding=1))\n"
    "    x = F.silu(F.conv2d(x, b[2].weight, b[2].bias, padding=2, dilation=2))\n"
    "    x = F.silu(F.conv2d(x, b[4].weight, b[4].bias, padding=1))\n"
    "    delta = F.conv2d(x, cnn.out.weight, cnn.out.bias).permute(0, 2, 3, 1)\n"
    "    return latent[..., :3] + delta\n"
)

_PSNR = (
    "def my_masked_psnr(img, gt, mask):\n"
    "    w = mask[..., None]\n"
    "    mse = ((img - gt) ** 2 * w).sum(dim=(1, 2, 3)) / (3 * w.sum(dim=(1, 2, 3)))\n"
    "    return 10 * torch.log10(1.0 / mse)\n"
)

_SSIM = (
    "def my_ssim_map(img, gt):\n"
    "    t = torch.arange(11.0) - 5\n"
    "    g = torch.exp(-t**2 / (2 * 1.5**2))  # WINDOW\n"
    "    w = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]\n"
    "    x, y = img.permute(2, 0, 1)[:, None], gt.permute(2, 0, 1)[:, None]\n"
    "    mx, my = F.conv2d(x, w), F.conv2d(y, w)\n"
    "    vx, vy = F.conv2d(x * x, w) - mx**2, F.conv2d(y * y, w) - my**2\n"
    "    cxy = F.conv2d(x * y, w) - mx * my\n"
    "    c1, c2 = 0.01**2, 0.03**2\n"
    "    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))\n"
    "    return s[:, 0].permute(1, 2, 0)\n"
)

# submission -> question -> (the wrong answer, a phrase its message must contain)
WRONG = {
    "wrong_a": {
        "q1": (_LATENT.replace("[colors, features]", "[features, colors]"), "features come before the colour"),
        "q2": (_CNN.replace("latent.permute(0, 3, 1, 2)", "latent.reshape(latent.shape[0], -1, *latent.shape[1:3])")
               .replace(".permute(0, 2, 3, 1)", ".reshape(latent.shape[0], *latent.shape[1:3], 3)"),
               "scrambles pixels and channels"),
        "q3": ("def my_masked_psnr(img, gt, mask):\n"
               "    return 10 * torch.log10(1 / ((img - gt) ** 2 * mask[..., None]).mean(dim=(1, 2, 3)))\n",
               "averaged over all pixels"),
        "q4": (_SSIM.replace("c1, c2 = 0.01**2, 0.03**2", "c1, c2 = 0.0, 0.0"), "the constants C1 = 0.01^2 and C2 = 0.03^2 are missing"),
    },
    "wrong_b": {
        "q1": (_LATENT.replace("    a = a * (torch.cumprod", "    # a = a * (torch.cumprod"), "early stop is missing"),
        "q2": (_CNN.replace("padding=2, dilation=2", "padding=1"), "middle convolution is not dilated"),
        "q3": (_PSNR.replace("1.0 / mse", "255.0**2 / mse"), "peak 255"),
        "q4": (_SSIM.replace("g = torch.exp(-t**2 / (2 * 1.5**2))", "g = torch.ones(11)"), "box (uniform) window"),
    },
}

FUNCTIONS = {"q1": "my_latent_image", "q2": "my_cnn_forward", "q3": "my_masked_psnr", "q4": "my_ssim_map"}


@pytest.fixture(scope="module")
def editions(assignment_editions):
    return assignment_editions(MASTER.stem)


@pytest.mark.slow
def test_screen_space_cnn_mistakes_are_named(editions, tmp_path):
    e = editions
    for sub, wrong in WRONG.items():
        for q, (code, _) in wrong.items():  # each wrong answer really is a change of the right one
            assert code not in (_LATENT, _CNN, _PSNR, _SSIM), f"{sub} {q}: the 'wrong' answer is unchanged"
        path = tmp_path / f"{sub}.ipynb"
        asg.answered(e["student"] / f"{NAME}.ipynb", path, {FUNCTIONS[q]: code for q, (code, _) in wrong.items()})
        res = asg.grade_one(e["autograder"], path)["questions"]
        assert set(res) == set(FUNCTIONS), res
        for q, (_, phrase) in wrong.items():
            score, _, output = res[q]
            assert score == 0 and phrase in output, f"{sub} {q}: expected 0 points and {phrase!r}, got {score}: {output}"


@pytest.mark.slow
def test_screen_space_cnn_reference_answers_score_full_marks(editions, tmp_path):
    """The unchanged answers above (the templates of the wrong ones) are right: the tests accept them."""
    e = editions
    path = tmp_path / "right.ipynb"
    asg.answered(e["student"] / f"{NAME}.ipynb", path,
            dict(zip(FUNCTIONS.values(), (_LATENT, _CNN, _PSNR, _SSIM))))
    res = asg.grade_one(e["autograder"], path)["questions"]
    assert set(res) == set(FUNCTIONS) and all(sc == mx > 0 for sc, mx, _ in res.values()), res
