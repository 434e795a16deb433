"""Formats and encodings: the Content-Type of each output format and which formats stream,
request bodies in any Content-Encoding the server decodes, response compression, and the
engine's per-block Arrow streams joined into one."""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import lz4.frame
from backports import zstd

if TYPE_CHECKING:
    from clickhouse_stand_in.engine import Engine


# Formats whose per-block output concatenates into the whole result (ArrowStream after
# splicing), so they can stream; other formats are buffered whole.
STREAMABLE_FORMATS = frozenset({"native", "rowbinary", "tabseparated", "tsv", "arrowstream"})
BINARY_FORMATS = frozenset(
    """native rowbinary rowbinarywithnames rowbinarywithnamesandtypes arrow arrowstream parquet
    orc avro msgpack protobuf capnproto bson npy""".split()
)
ARROW_END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"


# Server preference for response compression (chooseHTTPCompressionMethod); brotli and
# snappy are left out because the stand-in cannot produce them.
RESPONSE_COMPRESSION_PREFERENCE = ("zstd", "lz4", "gzip", "deflate", "xz", "bz2")


def content_type(output_format: str) -> str:
    name = output_format.lower()
    if name in BINARY_FORMATS:
        return "application/octet-stream"
    if name.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        header = "present" if "withnames" in name else "absent"
        return f"text/csv; charset=UTF-8; header={header}"
    if name.startswith("json"):
        return "application/json; charset=UTF-8"
    return "text/plain; charset=UTF-8"


def decompress_body(encoding: str, data: bytes, engine: Engine) -> bytes:
    """A request body in the Content-Encoding the server accepts (chooseCompressionMethod);
    bodies of several frames or members, as clients write them block by block, included."""
    method = encoding.strip().lower()
    if method in ("", "auto", "none"):
        return data
    decoders: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
        "gzip": ("ZLIB_INFLATE_FAILED", _gunzip),
        "gz": ("ZLIB_INFLATE_FAILED", _gunzip),
        "deflate": ("ZLIB_INFLATE_FAILED", zlib.decompress),
        "zstd": ("ZSTD_DECODER_FAILED", zstd.decompress),
        "zst": ("ZSTD_DECODER_FAILED", zstd.decompress),
        "lz4": ("LZ4_DECODER_FAILED", _lz4_frames),
        "xz": ("LZMA_STREAM_DECODER_FAILED", lzma.decompress),
        "lzma": ("LZMA_STREAM_DECODER_FAILED", lzma.decompress),
        "bz2": ("BZIP2_STREAM_DECODER_FAILED", bz2.decompress),
    }
    if method in decoders:
        error_name, decode = decoders[method]
        try:
            return decode(data)
        except (
            zlib.error,
            zstd.ZstdError,
            lzma.LZMAError,
            OSError,
            RuntimeError,
            ValueError,
            EOFError,
        ) as error:
            raise engine.error(error_name, f"Cannot decompress {method} data: {error}") from None
    if method in ("br", "brotli", "snappy"):
        raise engine.error("NOT_IMPLEMENTED", "Unsupported compression method")
    raise engine.error(
        "NOT_IMPLEMENTED",
        f"Unknown compression method '{encoding}'. Only 'auto', 'none', 'gzip', 'deflate', "
        "'br', 'xz', 'zstd', 'lz4', 'bz2', 'snappy' are supported as compression methods",
    )


def _gunzip(data: bytes) -> bytes:
    parts = []
    while data:
        decoder = zlib.decompressobj(wbits=31)
        parts.append(decoder.decompress(data))
        if not decoder.eof:
            raise EOFError("truncated gzip member")
        data = decoder.unused_data
    return b"".join(parts)


def _lz4_frames(data: bytes) -> bytes:
    parts = []
    while data:
        decoder = lz4.frame.LZ4FrameDecompressor()
        parts.append(decoder.decompress(data))
        if not decoder.eof:
            raise EOFError("truncated lz4 frame")
        data = decoder.unused_data
    return b"".join(parts)


class Encoder:
    """Compresses a response body as one stream, the way the server wraps its output buffer."""

    def __init__(self, method: str, level: int) -> None:
        self._prefix = b""
        if method == "zstd":
            self._codec: Any = zstd.ZstdCompressor(level=level)
        elif method == "lz4":
            self._codec = lz4.frame.LZ4FrameCompressor(compression_level=level)
            self._prefix = self._codec.begin()
        elif method in ("gzip", "deflate"):
            self._codec = zlib.compressobj(level, zlib.DEFLATED, 31 if method == "gzip" else 15)
        elif method == "xz":
            self._codec = lzma.LZMACompressor(preset=min(max(level, 0), 9))
        else:
            self._codec = bz2.BZ2Compressor(min(max(level, 1), 9))

    def compress(self, data: bytes | memoryview) -> bytes:
        out, self._prefix = self._prefix + self._codec.compress(data), b""
        return out

    def flush(self) -> bytes:
        out, self._prefix = self._prefix + self._codec.flush(), b""
        return out


def choose_response_compression(accept_encoding: str) -> str | None:
    # Substring matches, as the server's chooseHTTPCompressionMethod does.
    return next((m for m in RESPONSE_COMPRESSION_PREFERENCE if m in accept_encoding), None)


def join_arrow_stream(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """One Arrow IPC stream out of the engine's per-block streams: each block comes as a
    whole stream (schema, batches, end marker), and a server sends one, so every schema but
    the first and every end marker but the last are dropped."""
    held: bytes | None = None
    for chunk in chunks:
        if held is None:
            held = chunk
            continue
        yield held[:-8] if held.endswith(ARROW_END_OF_STREAM) else held
        continuation, length = struct.unpack_from("<Ii", chunk)
        held = chunk[8 + length :] if continuation == 0xFFFFFFFF else chunk[4 + continuation :]
    if held is not None:
        yield held
