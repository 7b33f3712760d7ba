"""Assignment ch05_gaussian_features (npga.book.assignments): typical wrong answers fail with the
message that names them.

tests/test_assignments.py checks, for every master, that the solutions score full marks, the
untouched student edition scores zero and no solution line survives; this file checks that the
mistakes each question's tests look for are the ones reported. Each wrong answer below gets the
other questions' parts from the package, so that one question's mistake does not spill over.
"""


import pytest


NAME = "ch05_gaussian_features"
pytestmark = pytest.mark.xdist_group(NAME)  # one worker builds this master (--dist loadgroup)


WRONG = {
    # the encoding without the identity term x
    "my_positional_encoding": (
        "def my_positional_encoding(x, L):\n"
        "    w = math.pi * 2.0 ** torch.arange(L, dtype=x.dtype)\n"
        "    a = (x[:, None, :] * w[:, None]).reshape(x.shape[0], 3 * L)\n"
        "    return torch.cat([torch.sin(a), torch.cos(a)], dim=-1)\n"
    ),
    # the raw expression code, not standardised with net.exp_mean / net.exp_std
    "my_detail_input": (
        "def my_detail_input(net, x_c, features, z_exp):\n"
        "    from npga.headmodels.nphm import positional_encoding\n"
        "    enc = positional_encoding((x_c - net.center) / net.scale, net.n_freqs)\n"
        "    parts = [enc] if features is None else [enc, features]\n"
        "    return torch.cat(parts + [z_exp.expand(x_c.shape[0], -1)], dim=-1)\n"
    ),
    # G evaluated at F's moved positions instead of the canonical ones
    "my_dynamics": (
        "def my_dynamics(net, x_c, features, z_exp, F_out):\n"
        "    g = net.outputs(F_out[0], features, z_exp)\n"
        "    return F_out[0] + g['means'], F_out[1] + g['quats'], F_out[2] + g['scales']\n"
    ),
    # the period of sin(w x) taken as pi / w: half the right wavelength
    "shortest_wavelength": (
        "def shortest_wavelength(scale, L):\n"
        "    return scale / 2 ** (L - 1) if L > 0 else float('inf')\n"
    ),
}

WRONG_TOO = {
    # frequencies 2^k without pi
    "my_positional_encoding": (
        "def my_positional_encoding(x, L):\n"
        "    w = 2.0 ** torch.arange(L, dtype=x.dtype)\n"
        "    a = (x[:, None, :] * w[:, None]).reshape(x.shape[0], 3 * L)\n"
        "    return torch.cat([x, torch.sin(a), torch.cos(a)], dim=-1)\n"
    ),
    # the position divided by the head size but not centred
    "my_detail_input": (
        "def my_detail_input(net, x_c, features, z_exp):\n"
        "    from npga.headmodels.nphm import positional_encoding\n"
        "    enc = positional_encoding(x_c / net.scale, net.n_freqs)\n"
        "    z = ((z_exp - net.exp_mean) / net.exp_std).expand(x_c.shape[0], -1)\n"
        "    return torch.cat(([enc] if features is None else [enc, features]) + [z], dim=-1)\n"
    ),
    # the position offset left in units of net.scale
    "my_dynamics": (
        "def my_dynamics(net, x_c, features, z_exp, F_out):\n"
        "    g = net.outputs(x_c, features, z_exp)\n"
        "    return F_out[0] + g['means'] / net.scale, F_out[1] + g['quats'], F_out[2] + g['scales']\n"
    ),
    # the chapter's cell's guard: no wavelength below two octaves
    "shortest_wavelength": (
        "def shortest_wavelength(scale, L):\n"
        "    return scale / 2 ** (L - 2) if L >= 2 else float('inf')\n"
    ),
}


@pytest.mark.slow
def test_gaussian_features_mistakes_are_named(grade_answers):
    res = grade_answers(NAME, WRONG)
    assert res["q1"][0] < res["q1"][1] and "missing the identity term" in res["q1"][2], res["q1"][2]
    assert res["q2"][0] == 0 and "z_exp is not standardised" in res["q2"][2], res["q2"][2]
    assert res["q3"][0] == 0 and "evaluated G at F's moved positions" in res["q3"][2], res["q3"][2]
    assert res["q4"][0] == 0 and "half the right value" in res["q4"][2], res["q4"][2]

    res = grade_answers(NAME, WRONG_TOO, "wrong_too")
    assert res["q1"][0] < res["q1"][1] and "the frequencies are 2^k pi, not 2^k" in res["q1"][2], res["q1"][2]
    assert res["q2"][0] == 0 and "did not subtract net.center" in res["q2"][2], res["q2"][2]
    assert res["q3"][0] == 0 and "multiply it by net.scale" in res["q3"][2], res["q3"][2]
    assert res["q4"][0] == 0 and "L = 1: sin(pi x / s), period 2 s" in res["q4"][2], res["q4"][2]
