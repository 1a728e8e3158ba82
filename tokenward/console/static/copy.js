// The copy button of the one-time token view: the only script of the console.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const status = document.getElementById("copy-status");
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    button.hidden = false;
    button.addEventListener("click", async () => {
      source.select();
      try {
        await navigator.clipboard.writeText(source.value);
        status.textContent = "Copied to the clipboard.";
      } catch {
        status.textContent = "Could not copy: the token is selected, press Ctrl+C.";
      }
    });
  }
});
