"""Fan-out workers each own a connection lane; everything else shares one pool."""

from __future__ import annotations

import asyncio

import httpx

from sync_assets.partners_api.lanes import LanedTransport, lane


def test_each_worker_uses_its_own_lane_and_others_the_shared_pool() -> None:
    built: list[tuple[int, list[str]]] = []

    def make(connections: int) -> httpx.AsyncBaseTransport:
        seen: list[str] = []
        built.append((connections, seen))

        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(request.url.path)
            return httpx.Response(200)

        return httpx.MockTransport(answer)

    transport = LanedTransport(3, make)

    async def worker(number: int) -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            with lane(number):
                for step in range(5):
                    await client.get(f"/lane{number}/{step}")
                    await asyncio.sleep(0)  # let the other workers interleave
            await client.get(f"/after{number}")

    async def main() -> None:
        await asyncio.gather(*(worker(number) for number in range(3)))
        await transport.aclose()

    asyncio.run(main())
    lanes, (shared_size, shared_seen) = built[:3], built[3]
    for number, (connections, seen) in enumerate(lanes):
        assert connections == 1
        assert seen == [f"/lane{number}/{step}" for step in range(5)]
    assert shared_size == 3 and sorted(shared_seen) == ["/after0", "/after1", "/after2"]
