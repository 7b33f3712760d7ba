"""Assignment ch04_cycle_consistency (npga.book.assignments): typical wrong answers fail with the
message that names them.

tests/test_assignments.py checks, for every master, that the solutions score full marks, the
untouched student edition scores zero and no solution line survives; this file checks that the
mistakes each question's tests look for are the ones reported: one wrong answer per question,
in one notebook (the questions do not use each other's answers).
"""


import pytest


NAME = "ch04_cycle_consistency"
pytestmark = pytest.mark.xdist_group(NAME)  # one worker builds this master (--dist loadgroup)


WRONG = {
    # B first, then F: F(B(x_c)) - x_c
    "my_cycle_loss": (
        "def my_cycle_loss(field, backward, x_c, z_id, z_exp):\n"
        "    return (field(backward(x_c, z_id, z_exp), z_exp, z_id) - x_c).norm(dim=-1).mean()\n"
    ),
    # the Newton step solved with J^T (autograd's rows read as columns)
    "my_newton_step": (
        "def my_newton_step(backward, x, x_c, z_id, z_exp):\n"
        "    val, J = pointwise_jacobian(lambda q: backward(q, z_id, z_exp), x)\n"
        "    return x - torch.linalg.solve(J.transpose(1, 2), (val - x_c)[..., None])[..., 0]\n"
    ),
    # sigmoid(z) as the derivative of SiLU (that is softplus')
    "my_mlp_jacobian": (
        "def my_mlp_jacobian(linears, x):\n"
        "    n, d = x.shape\n"
        "    h, dh = x, torch.eye(d, dtype=x.dtype).expand(n, d, d)\n"
        "    for lin in linears[:-1]:\n"
        "        z = lin(h)\n"
        "        dh = (dh @ lin.weight.T) * torch.sigmoid(z)[:, None, :]\n"
        "        h = torch.nn.functional.silu(z)\n"
        "    return linears[-1](h), (dh @ linears[-1].weight.T).transpose(1, 2)\n"
    ),
    # J^T Sigma J instead of J Sigma J^T
    "my_posed_covariance": (
        "def my_posed_covariance(field, means, quats, log_scales, z_exp, z_id):\n"
        "    _, J = field.forward_and_jacobian(means, z_exp, z_id)\n"
        "    return J.transpose(-1, -2) @ G.covariance(quats, log_scales) @ J\n"
    ),
}


@pytest.mark.slow
def test_cycle_consistency_mistakes_are_named(grade_answers):
    res = grade_answers(NAME, WRONG)
    assert set(res) == {"q1", "q2", "q3", "q4"}, res
    expected = {
        "q1": "wrong composition order",
        "q2": "you solved with J transposed",
        "q3": "the derivative of softplus",
        "q4": "the Jacobian goes on the left",
    }
    for q, message in expected.items():
        score, _, output = res[q]
        assert score == 0 and message in output, f"{q}: {output}"
