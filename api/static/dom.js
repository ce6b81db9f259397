// Looking up elements, and telling screen readers what happened.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

export function announce(text) {
  const region = $("#announcer");
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 50); // a change screen readers notice
}
