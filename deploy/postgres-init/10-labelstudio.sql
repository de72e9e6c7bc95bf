-- Label Studio keeps its own database beside camloop's on the same server.
CREATE DATABASE labelstudio OWNER camloop;
