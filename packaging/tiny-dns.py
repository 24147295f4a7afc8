#!/usr/bin/env python3
"""A minimal DNS responder for packaging/verify-static.sh: answers A queries for one
name with one address, NXDOMAIN otherwise. Only ever bound to loopback.

    tiny-dns.py LISTEN NAME ADDRESS READY_FILE

READY_FILE is created once the socket is bound, so the caller never queries too early
(a query before the bind is refused and the resolver gives up at once)."""
import socket
import struct
import sys

listen, name, address, ready_file = sys.argv[1], sys.argv[2].rstrip(".").lower(), sys.argv[3], sys.argv[4]
host, port = listen.rsplit(":", 1)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((host, int(port)))
sock.settimeout(60)  # bounded: the script kills us sooner, this is a backstop
open(ready_file, "w").close()

def qname(packet, offset):
    labels = []
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1 : offset + 1 + length].decode())
        offset += 1 + length
    return ".".join(labels).lower(), offset + 1

for _ in range(1000):
    try:
        packet, peer = sock.recvfrom(512)
    except socket.timeout:
        break
    ident, flags, qd = struct.unpack(">HHH", packet[:6])
    asked, end = qname(packet, 12)
    qtype, qclass = struct.unpack(">HH", packet[end : end + 4])
    question = packet[12 : end + 4]
    if asked == name and qtype == 1:
        answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(address)
        header = struct.pack(">HHHHHH", ident, 0x8180, 1, 1, 0, 0)
    elif asked == name:
        answer = b""
        header = struct.pack(">HHHHHH", ident, 0x8180, 1, 0, 0, 0)
    else:
        answer = b""
        header = struct.pack(">HHHHHH", ident, 0x8183, 1, 0, 0, 0)
    sock.sendto(header + question + answer, peer)
