"""Progress bars: tqdm in the driver, Ray's tqdm_ray (drawn by the driver) inside Ray workers."""

from __future__ import annotations

from polymodal import progress


def test_driver_bar_is_plain_tqdm():
    b = progress.bar(range(3), total=3, desc="x", unit="step")
    assert type(b).__module__.startswith("tqdm") and list(b) == [0, 1, 2]
    b.close()
    assert not progress.in_ray_worker()


def test_worker_bar_is_ray_tqdm(ray_cluster):
    @ray_cluster.remote(num_cpus=0)
    def use_bar() -> tuple[bool, str, int]:
        b = progress.bar(total=4, desc="epoch 1/1", unit="step")
        b.update(2)
        b.set_postfix(loss="0.5")
        desc, n = b._base_desc, b.n
        b.close()
        return progress.in_ray_worker(), type(b).__mro__[1].__module__ + ":" + desc, n

    inside, kind, n = ray_cluster.get(use_bar.remote())
    assert inside and kind == "ray.experimental.tqdm_ray:epoch 1/1" and n == 2
