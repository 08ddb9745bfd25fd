// Small DOM helpers: every value reaches the page as text, never as markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function applyAttributes(element, attributes) {
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") {
      element.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    } else if (key === "dataset") {
      Object.assign(element.dataset, value);
    } else if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "value" && "value" in element) {
      element.value = value;
    } else if (key === "checked" || key === "selected" || key === "disabled" || key === "hidden") {
      element[key] = Boolean(value);
    } else {
      element.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

function appendChildren(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** h("div", {class: "card"}, "text", h("b", {}, "bold")) */
export function h(tag, attributes, ...children) {
  const element = document.createElement(tag);
  applyAttributes(element, attributes);
  appendChildren(element, children);
  return element;
}

export function s(tag, attributes, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value !== undefined && value !== null && value !== false) element.setAttribute(key, String(value));
  }
  appendChildren(element, children);
  return element;
}

export function clear(element) {
  while (element.firstChild) element.removeChild(element.firstChild);
  return element;
}

export function replace(element, ...children) {
  clear(element);
  appendChildren(element, children);
  return element;
}

/** A <select> whose options are strings or [value, label] pairs. */
export function select(attributes, options, current) {
  return h(
    "select",
    attributes,
    options.map((option) => {
      const [value, label] = Array.isArray(option) ? option : [option, option];
      return h("option", { value, selected: String(value) === String(current ?? "") }, label);
    }),
  );
}

let fieldCounter = 0;

/** A labelled form field; the hint and the error slot are tied to the control for screen readers. */
export function field(label, control, hint, errorFor) {
  fieldCounter += 1;
  const hintId = hint ? `hint-${fieldCounter}` : null;
  const errorId = errorFor ? `error-${fieldCounter}` : null;
  const describedBy = [control.getAttribute?.("aria-describedby"), hintId, errorId].filter(Boolean).join(" ");
  if (describedBy && control.setAttribute) control.setAttribute("aria-describedby", describedBy);
  return h(
    "label",
    { class: "field" },
    h("span", { class: "field-label" }, label),
    control,
    hint ? h("span", { class: "hint", id: hintId }, hint) : null,
    errorFor ? h("span", { class: "field-error", id: errorId, role: "alert", dataset: { errorFor } }) : null,
  );
}
