"use strict";
// A link to a failure opens it: following an anchor leaves a closed <details> closed.
function openTarget() {
  const id = decodeURIComponent(location.hash.slice(1));
  const target = id && document.getElementById(id);
  if (target && target.tagName === "DETAILS") {
    target.open = true;
  }
}
addEventListener("hashchange", openTarget);
openTarget();
