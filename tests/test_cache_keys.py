"""Caches are keyed by the config sections they depend on: a profile changed with
with_overrides (an exercise) never loads or overwrites the book's models."""

import pytest

from npga.avatar.train import avatar_dir
from npga.config import get_profile, with_overrides
from npga.deformation.store import prior_path
from npga.headmodels.fitting import track_dataset
from npga.headmodels.store import models_dir


def test_default_profile_keeps_the_book_paths():
    P = get_profile("mini")
    assert P.variant_key("data", "head_model", "deform") == ""
    assert models_dir(P) == P.cache_root / "headmodels"
    assert prior_path(P).name == "forward_field_nphm.pt"
    assert P.data_root.name == "mini" and P.cache_root.name == "mini"
    same = with_overrides(P, head_model={"exp_dims": P.head_model.exp_dims})  # no real change
    assert models_dir(same) == models_dir(P) and prior_path(same) == prior_path(P)
    assert models_dir(with_overrides(P, seed=P.seed + 1)) == models_dir(P)  # seeds are not keys


def test_changed_sections_get_their_own_caches():
    P = get_profile("mini")
    jaw = with_overrides(P, head_model={"canonical_jaw_open": 0.0})
    jaw2 = with_overrides(P, head_model={"canonical_jaw_open": 0.0})
    wide = with_overrides(P, head_model={"canonical_jaw_open": 0.5})
    assert models_dir(jaw) != models_dir(P) and models_dir(jaw).parent == models_dir(P).parent
    assert models_dir(jaw) == models_dir(jaw2)  # the key is a function of the settings
    assert models_dir(wide) != models_dir(jaw)
    assert prior_path(jaw) != prior_path(P)  # a prior of another head model is another file
    no_id = with_overrides(P, deform={"use_id": not P.deform.use_id})
    assert prior_path(no_id) != prior_path(P) and models_dir(no_id) == models_dir(P)
    bigger = with_overrides(P, data={"width": 2 * P.data.width, "height": 2 * P.data.height})
    assert bigger.data_root != P.data_root and bigger.cache_root != P.cache_root
    assert models_dir(bigger) != models_dir(P)
    octaves = with_overrides(P, avatar={"detail_freqs": P.avatar.detail_freqs + 2})
    assert avatar_dir(octaves, "vanilla") != avatar_dir(P, "vanilla")
    assert avatar_dir(P, "vanilla") == P.cache_root / "avatars" / "vanilla"
    # another seed is another run: load_or_train_avatar must not return the seed-0 avatar
    seed1 = with_overrides(P, seed=P.seed + 1)
    assert avatar_dir(seed1, "vanilla") == P.cache_root / "avatars" / f"vanilla-seed{P.seed + 1}"
    assert avatar_dir(with_overrides(octaves, seed=P.seed + 1), "vanilla") not in (
        avatar_dir(octaves, "vanilla"), avatar_dir(seed1, "vanilla"))


def test_tracking_with_other_head_model_settings_is_refused_before_any_work():
    P = with_overrides(get_profile("mini"), head_model={"canonical_jaw_open": 0.0})
    with pytest.raises(ValueError, match="would overwrite the codes"):
        track_dataset(P, progress=False)
