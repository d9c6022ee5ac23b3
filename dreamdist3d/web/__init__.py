"""Pages a person opens in a browser: the 3D gallery (`gallery_page`) and a local server for it (`serve`).
The viewer (`<model-viewer>`, with its licences) is vendored in `static/` and copied beside each page."""
