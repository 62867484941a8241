// Links and embed snippets of a view.

/** Escapes text for an HTML attribute value in double quotes. */
export function escapeAttribute(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** An <iframe> showing `url` (the standalone interface with a deep link), for pasting into
 *  a web page. The height fits the interface's timeline and first attribution row. */
export function embedSnippet(url: string, title: string): string {
  return `<iframe src="${escapeAttribute(url)}" title="${escapeAttribute(title)}: interactive interface" ` +
    `width="100%" height="900" style="border: 1px solid #ccc" loading="lazy"></iframe>`;
}

/** The standalone interface's page for a bundle URL: the bundle index sits in
 *  <interface>/bundle/bundle.json, the page is <interface>/index.html. */
export function standalonePage(bundleUrl: string): string {
  return new URL("../index.html", new URL(bundleUrl, document.baseURI)).href;
}
