import itertools

import pytest

from nemo_imagen.data.shards import ShardReadError, expand_shard_paths, iter_shard, partition_shards


@pytest.mark.parametrize("num_shards", [1, 2, 3, 4, 5, 7, 8, 12])
@pytest.mark.parametrize("world_size, num_workers", [(1, 1), (1, 2), (2, 2), (3, 2), (4, 3)])
def test_partitions_are_disjoint_and_cover_every_sample(num_shards, world_size, num_workers):
    shards = [f"shard{i}" for i in range(num_shards)]
    samples_per_shard = 7
    owners = {}
    for rank, worker in itertools.product(range(world_size), range(num_workers)):
        part = partition_shards(shards, rank, world_size, worker, num_workers)
        for shard in part.shards:
            for index in range(samples_per_shard):
                if part.owns(index):
                    assert (shard, index) not in owners, f"{(shard, index)} owned twice"
                    owners[(shard, index)] = (rank, worker)
    assert set(owners) == {(s, i) for s in shards for i in range(samples_per_shard)}


def test_enough_shards_are_dealt_whole_rank_first():
    shards = [f"s{i}" for i in range(8)]
    assert partition_shards(shards, 1, 2, 0, 2).shards == ("s1", "s5")  # rank 1: s1 s3 s5 s7; worker 0: s1 s5
    assert partition_shards(shards, 1, 2, 0, 2).stride == 1


def test_too_few_shards_split_samples():
    part = partition_shards(["only"], 1, 2, 1, 2)
    assert part.shards == ("only",)
    assert (part.stride, part.offset) == (4, 3)


def test_expand_shard_paths_expands_braces_in_order(tmp_path):
    for i in range(3):
        (tmp_path / f"train-{i:02d}.tar").write_bytes(b"")
    (tmp_path / "extra.tar").write_bytes(b"")
    paths = expand_shard_paths([str(tmp_path / "train-{00..02}.tar"), str(tmp_path / "extra.tar")])
    assert paths == [str(tmp_path / f"train-{i:02d}.tar") for i in range(3)] + [str(tmp_path / "extra.tar")]


def test_expand_shard_paths_names_the_missing_shard(tmp_path):
    (tmp_path / "train-00.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"data\.train\.dataset_path: 1 of 2 shards do not exist: '.*train-01\.tar' \(from '.*\{00\.\.01\}"):
        expand_shard_paths([str(tmp_path / "train-{00..01}.tar")])
    with pytest.raises(ValueError, match="data.train.dataset_path: is empty"):
        expand_shard_paths([])


def test_iter_shard_groups_members_by_key(tmp_path, kit):
    path = kit.write_shard(tmp_path / "a.tar", [kit.good_sample(f"k{i}", i) for i in range(3)])
    samples = list(iter_shard(path))
    assert [key for key, _ in samples] == ["k0", "k1", "k2"]
    assert set(samples[0][1]) == {"jpg", "txt", "embeddings_test.npy"}
    assert samples[1][1]["txt"] == b"caption k1"


def test_iter_shard_yields_the_samples_before_damage_then_raises(tmp_path, kit):
    path = kit.write_shard(tmp_path / "a.tar", [kit.good_sample(f"k{i}", i) for i in range(4)])
    data = open(path, "rb").read()
    cut = data.index(b"k3.jpg") + 1024  # inside the last sample's image
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    keys = []
    with pytest.raises(ShardReadError, match=r"cut\.tar.*while reading sample 'k3'"):
        for key, _ in iter_shard(str(tmp_path / "cut.tar")):
            keys.append(key)
    assert keys == ["k0", "k1", "k2"]
