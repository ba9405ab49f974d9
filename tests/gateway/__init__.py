"""ws-stream serve as a gateway: authentication, named targets, web files, noVNC."""
