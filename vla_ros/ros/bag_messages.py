"""rclpy messages <-> CDR bytes, and message classes by type name.

The bag tools (vla_ros.tools.bag_io) read and write bags without ROS; this is
where their bytes meet rclpy: the CDR bytes of a recorded message are
deserialized here into the message the node's subscription would hand over.

rclpy and the message packages are imported on first use, so importing this
module stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any


def message_class(msgtype: str) -> type:
    """The rclpy message class of 'pkg/msg/Name', imported from its ROS Python package.

    Raises:
        ImportError, AttributeError: the package or the type is not available.
        ValueError: msgtype is not of the form 'pkg/msg/Name'.
    """
    package, kind, name = msgtype.split('/')
    module = importlib.import_module(f'{package}.{kind}')
    return getattr(module, name)


def deserialize(data: bytes, msgtype: str | type) -> Any:
    """The rclpy message held in CDR bytes.

    msgtype: 'pkg/msg/Name' or the message class itself.

    Raises what message_class raises for an unknown type name, and rclpy's own
    RuntimeError / TypeError on bytes that are not such a message.
    """
    from rclpy.serialization import deserialize_message

    return deserialize_message(data, message_class(msgtype) if isinstance(msgtype, str) else msgtype)


def serialize(msg: Any) -> bytes:
    """The CDR bytes of an rclpy message (what a publisher sends)."""
    from rclpy.serialization import serialize_message

    return bytes(serialize_message(msg))
