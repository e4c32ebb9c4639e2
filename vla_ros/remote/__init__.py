"""Remote inference: openpi's websocket policy protocol over a vla_ros Policy (docs/remote.md).

codec        msgpack with numpy arrays, byte for byte openpi-client's wire format; no pickle
obs_formats  request dicts (openpi's ALOHA, DROID, LIBERO conventions, or vla_ros's camera slots)
             -> RawObservation, validated, each error naming the key
server       PolicyServer: an asyncio websocket server, inference queued to a worker thread per replica
fleet        `vla-ros serve --ray`: PolicyServer replicas as a Ray Serve application (optional extra)

Importing this package imports neither websockets nor torch; `server` needs websockets and
`codec` msgpack (requirements.txt); `fleet` imports Ray Serve and FastAPI only when called.
"""
