// The cascade page: a client of the public API, nothing more (plain ES modules, no build).

import { apiKey, setApiKey } from "./api.js";
import { $, $$ } from "./dom.js";
import { loadChoices, setUpForms } from "./forms.js";
import { restoreJobs } from "./jobs.js";

function setUpTabs() {
  const tabs = $$("[role=tab]");
  const select = (tab) => {
    for (const other of tabs) {
      const selected = other === tab;
      other.setAttribute("aria-selected", String(selected));
      other.tabIndex = selected ? 0 : -1;
      $(`#${other.getAttribute("aria-controls")}`).hidden = !selected;
    }
    tab.focus();
  };
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -index, End: tabs.length - 1 - index };
      if (!(event.key in moves)) return;
      event.preventDefault();
      select(tabs[(index + moves[event.key] + tabs.length) % tabs.length]);
    });
  });
}

function setUpKey() {
  const input = $("#api-key");
  input.value = apiKey();
  input.addEventListener("change", () => setApiKey(input.value.trim()));
}

setUpTabs();
setUpKey();
setUpForms();
restoreJobs();
loadChoices();
