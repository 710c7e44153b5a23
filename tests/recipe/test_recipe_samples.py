"""The seeded question samples the recipe's stages draw."""
import json

from recipe.samples import sampled


def test_sampled_questions_are_a_seeded_draw_in_file_order(tmp_path):
    # Sorted by type, as hotpotqa_closed is: 20 bridge rows, then 20 comparisons.
    rows = [json.dumps({"id": f"{kind}{i}"}) for kind in ("b", "c") for i in range(20)]
    source = tmp_path / "train.jsonl"
    source.write_text("\n".join(rows) + "\n")

    def ids(path):
        return [json.loads(line)["id"] for line in path.read_text().splitlines()]

    picked = ids(sampled(source, 10, tmp_path / "out" / "a.jsonl", seed=3))
    assert len(set(picked)) == 10 and sorted(picked, key=lambda i: rows.index(json.dumps({"id": i}))) == picked
    assert {i[0] for i in picked} == {"b", "c"}  # not the first ten (all bridge)
    assert ids(sampled(source, 10, tmp_path / "again" / "a.jsonl", seed=3)) == picked
    assert ids(sampled(source, 10, tmp_path / "out" / "b.jsonl", seed=3)) != picked
    assert ids(sampled(source, 10, tmp_path / "other_seed" / "a.jsonl", seed=4)) != picked
    # Resumed with another limit: the file is drawn again, not reused.
    assert len(ids(sampled(source, 5, tmp_path / "out" / "a.jsonl", seed=3))) == 5
    assert sampled(source, None, tmp_path / "out" / "c.jsonl", seed=3) == source
    assert sampled(source, 40, tmp_path / "out" / "c.jsonl", seed=3) == source
