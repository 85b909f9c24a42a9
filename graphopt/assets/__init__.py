"""Files the HTML pictures inline: the vendored dagre layout and the page script and style."""
