"""Assignment ch03_head_models (npga.book.assignments): typical wrong answers fail with the
message that names them.

tests/test_assignments.py checks, for every master, that the solutions score full marks, the
untouched student edition scores zero and no solution line survives; this file checks that the
mistakes each question's tests look for are the ones reported. One notebook carries one wrong
answer per question; where a question uses an earlier one (q4 uses q3's closest point), the
earlier answer in that notebook is a correct one borrowed from the package, so that one
question's mistake does not spill over into the next.
"""


import pytest


NAME = "ch03_head_models"
pytestmark = pytest.mark.xdist_group(NAME)  # one worker builds this master (--dist loadgroup)


WRONG = {
    # the expression offsets centred like the identity basis (z_exp = 0 would not be neutral)
    "my_pca": (
        "def my_pca(data, k, centred):\n"
        "    n = data.shape[0]\n"
        "    _, s, vt = np.linalg.svd(data - data.mean(axis=0), full_matrices=False)\n"
        "    k = min(k, int(np.sum(s > 1e-9 * s[0])))\n"
        "    sig = s[:k] / np.sqrt(n - 1 if centred else n)\n"
        "    return vt[:k] * sig[:, None], sig\n"
    ),
    # the identity's part B_id z_id not subtracted from the target
    "my_fit_expression": (
        "def my_fit_expression(model, target, z_id, lam):\n"
        "    J = model.basis_exp.numpy().reshape(model.exp_dims, -1).T\n"
        "    y = (target - model.mean.numpy()).reshape(-1)\n"
        "    return np.linalg.solve(J.T @ J + lam * np.eye(model.exp_dims), J.T @ y)\n"
    ),
    # the projection onto the plane, never clamped to the triangle
    "my_closest_point_on_triangle": (
        "def my_closest_point_on_triangle(p, a, b, c):\n"
        "    n = np.cross(b - a, c - a)\n"
        "    n = n / np.linalg.norm(n, axis=1, keepdims=True)\n"
        "    return p - np.einsum('ij,ij->i', p - a, n)[:, None] * n\n"
    ),
    # q4's point-to-mesh right (brute force with the package's closest points, since this
    # notebook's q3 is wrong); the Chamfer distance pools both sides' distances
    "my_point_to_mesh": (
        "def my_point_to_mesh(points, vertices, faces):\n"
        "    t = np.tile(vertices[faces], (len(points), 1, 1))\n"
        "    p = np.repeat(points, len(faces), axis=0)\n"
        "    q = geometry.closest_point_on_triangles(p, t[:, 0], t[:, 1], t[:, 2])[0]\n"
        "    return np.linalg.norm(q - p, axis=1).reshape(len(points), -1).min(axis=1)\n"
        "\n"
        "def my_chamfer(points_a, verts_a, faces_a, points_b, verts_b, faces_b):\n"
        "    d = [my_point_to_mesh(points_a, verts_b, faces_b),\n"
        "         my_point_to_mesh(points_b, verts_a, faces_a)]\n"
        "    return float(np.concatenate(d).mean())\n"
    ),
}


@pytest.mark.slow
def test_head_model_mistakes_are_named(grade_answers):
    res = grade_answers(NAME, WRONG)
    assert set(res) == {"q1", "q2", "q3", "q4"}, res
    expected = {
        "q1": "you centred the expression offsets",
        "q2": "not the identity's part B_id z_id",
        "q3": "projection onto the triangle's plane",
        "q4": "you pool all distances into one mean",
    }
    for q, message in expected.items():
        score, _, output = res[q]
        assert score == 0 and message in output, f"{q}: {output}"
