"""Multimodal: rerank image nodes against an image query with Qwen3-VL, in LlamaIndex.

Writes three tiny PNG files (each with a caption in a PNG text chunk, which the offline emulator
reads in place of vision), then ranks them, plus a web image and a text node, against a query
image. Runs offline against the bundled emulator unless SILICONFLOW_API_KEY is set (the real model
looks at the pictures; these placeholders are 1x1 pixels, so expect arbitrary scores there).

    python examples/multimodal_rerank.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _support import picture, real_api_or_emulator
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode

from llama_index_siliconflow import SiliconFlowRerank


def main() -> None:
    """Rank image, web-image and text nodes against an image query."""
    with real_api_or_emulator(), tempfile.TemporaryDirectory() as folder:
        files = {}
        for name, caption in [
            ("query", "a red apple on a wooden table"),
            ("apple", "red apple close up"),
            ("bus", "yellow school bus"),
        ]:
            files[name] = Path(folder) / f"{name}.png"
            files[name].write_bytes(picture(caption, size=1))

        nodes = [
            NodeWithScore(node=ImageNode(image_path=str(files["bus"]), text="bus photo")),
            NodeWithScore(node=ImageNode(image_path=str(files["apple"]), text="apple photo")),
            NodeWithScore(node=ImageNode(image_url="https://example.com/img/green-apple.jpg")),
            NodeWithScore(node=TextNode(text="A bowl of red apples on a table.")),
        ]
        # The image nodes name files this example wrote itself, so reading them is allowed.
        reranker = SiliconFlowRerank(
            model="Qwen/Qwen3-VL-Reranker-8B", top_n=None, allow_local_media=True
        )
        query = QueryBundle(query_str="", image_path=str(files["query"]))
        print("Nodes ranked against the query image:")
        for result in reranker.postprocess_nodes(nodes, query_bundle=query):
            node = result.node
            label = getattr(node, "image_url", None) or getattr(node, "image_path", None)
            label = Path(label).name if label and not label.startswith("http") else label
            print(f"  {result.score:.3f}  {label or node.get_content()}")


if __name__ == "__main__":
    main()
