"""`--mcp`: /preview and /generate as MCP tools, called with the real MCP client over streamable HTTP (loopback)."""

import asyncio
import base64

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import DEPTH_SYN, launch_app
from fluxdepth_ui.ui.launch import build_parser, create


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


async def _session_calls(url: str, calls):
    async with streamable_http_client(url) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = {t.name: t for t in (await session.list_tools()).tools}
            results = [await session.call_tool(name, args) for name, args in calls]
            return tools, results


def test_tools_are_listed_documented_and_callable(tmp_path):
    studio, demo = launch_app(tmp_path, "--mcp")
    try:
        tools, (preview, generate, refused) = asyncio.run(_session_calls(demo.local_url + "gradio_api/mcp/", [
            ("fluxdepth_preview", {"depth": data_url(DEPTH_SYN), "long_side": 256}),
            ("fluxdepth_generate", {"depth": data_url(DEPTH_SYN), "prompt": "a hall", "seed": 9, "steps": 1,
                                    "long_side": 256}),
            ("fluxdepth_preview", {"depth": data_url(DEPTH_SYN), "long_side": 99999}),
        ]))
    finally:
        demo.close()
    # Only the endpoints are tools (no page event leaks out as one), each described per parameter.
    assert set(tools) == {"fluxdepth_preview", "fluxdepth_generate", "fluxdepth_inpaint"}
    assert "white is regenerated" in tools["fluxdepth_inpaint"].inputSchema["properties"]["mask"]["description"]
    props = tools["fluxdepth_generate"].inputSchema["properties"]
    assert "FLUX.1-Depth-dev" in tools["fluxdepth_generate"].description
    assert props["seed"]["description"].startswith("random seed; -1 draws one")
    assert "png16" in props["also_save"]["description"]
    # The preview comes back as the control map image plus its stats; generate as the image plus its record.
    kinds = [c.type for c in preview.content]
    assert "image" in kinds and not preview.isError
    texts = [c.text for c in generate.content if c.type == "text"]
    assert any("'seed': 9" in t and "seed9.png" in t for t in texts), texts
    assert list(studio.outputs.glob("*/*-seed9.png"))
    # A bad value is the same one line as everywhere else.
    message = " ".join(c.text for c in refused.content if c.type == "text")
    assert "long side 99999 is out of range" in message and "Traceback" not in message


@pytest.mark.parametrize("flags", [["--share"], []])
def test_mcp_is_local_only(tmp_path, flags, monkeypatch):
    if not flags:
        monkeypatch.setenv("SPACE_ID", "someone/space")
    args = build_parser().parse_args(["--model", "tiny-random", "--outputs", str(tmp_path), "--mcp", *flags])
    with pytest.raises(ValueError, match="--mcp is for a local studio"):
        create(args)


def test_without_mcp_there_is_no_mcp_route(tmp_path):
    import httpx

    _, demo = launch_app(tmp_path)
    try:
        assert httpx.get(demo.local_url + "gradio_api/mcp/schema").status_code == 404
    finally:
        demo.close()


