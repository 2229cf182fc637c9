"""Being live: ``being serve RUN...`` loads trained avatars once and streams them speaking live audio.

- :mod:`.timeline`: one session's audio clock (speech queued, silence filled in, frames cut on the clock);
- :mod:`.host`: one avatar rendering the frames of all its sessions in shared batches, off the event loop;
- :mod:`.session`: a session tying the two together, with its bounded output;
- :mod:`.wire`: the WebSocket protocol; :mod:`.rtc`: the WebRTC tracks; :mod:`.app`: the ASGI app and page;
- :mod:`.client`: a small Python client of the WebSocket protocol.
"""

from being_core import hookimpl


@hookimpl
def being_register_commands(commands):
    from .command import ServeCommand

    commands.add(ServeCommand())
