/**
 * Form fields from JSON Schema: one input per property of an agent's
 * `params_schema` (as `GET agents` publishes it), plain DOM. A field left blank
 * is left out of the submission, so the server's default applies and the form
 * never has to repeat it.
 */

/** The subset of JSON Schema the agents' parameter schemas use. */
export interface ISchema {
  type?: string | string[];
  enum?: unknown[];
  default?: unknown;
  description?: string;
  examples?: unknown[];
  minimum?: number;
  maximum?: number;
  title?: string;
  properties?: { [name: string]: ISchema };
  required?: string[];
}

/** One rendered field: its element, and how to read and set its value. */
export interface IField {
  /** The API's name for the value: `priority`, `params.rfi_strategy`. */
  readonly name: string;
  readonly el: HTMLElement;
  /** The value, or undefined when blank; throws a FieldError when it cannot be read. */
  read(): unknown;
  set(value: unknown): void;
  /** Show (or clear, with null) a message under the field. */
  showError(message: string | null): void;
}

/** A value the form itself cannot read (bad JSON, not a number): shown at its field. */
export class FieldError extends Error {
  constructor(readonly field: string, message: string) {
    super(message);
  }
}

function primaryType(schema: ISchema): string {
  const t = schema.type;
  if (Array.isArray(t)) {
    return t.find(x => x !== 'null') ?? 'string';
  }
  return t ?? (schema.enum ? 'string' : 'object');
}

function shown(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/** A field for `schema`, labelled `label`, named `name` in error answers. */
export function createField(name: string, label: string, schema: ISchema, required = false): IField {
  const el = document.createElement('div');
  el.className = 'ch-field';
  el.dataset.field = name;
  const title = document.createElement('label');
  title.className = 'ch-field-label';
  title.textContent = required ? `${label} *` : label;
  el.appendChild(title);
  const type = primaryType(schema);
  let input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
  let read: () => unknown;
  let set: (value: unknown) => void;

  if (schema.enum || type === 'boolean') {
    const select = document.createElement('select');
    const options = schema.enum ?? [true, false];
    const blank = document.createElement('option');
    blank.value = '';
    blank.textContent = schema.default !== undefined ? `default (${shown(schema.default)})` : '—';
    select.appendChild(blank);
    options.forEach((option, i) => {
      const o = document.createElement('option');
      o.value = String(i);
      o.textContent = shown(option);
      select.appendChild(o);
    });
    read = () => (select.value === '' ? undefined : options[Number(select.value)]);
    set = value => {
      const i = options.findIndex(o => o === value);
      select.value = i < 0 ? '' : String(i);
    };
    input = select;
  } else if (type === 'integer' || type === 'number') {
    const number = document.createElement('input');
    number.type = 'number';
    number.step = type === 'integer' ? '1' : 'any';
    if (schema.minimum !== undefined) {
      number.min = String(schema.minimum);
    }
    if (schema.maximum !== undefined) {
      number.max = String(schema.maximum);
    }
    read = () => {
      const text = number.value.trim();
      if (!text) {
        return undefined;
      }
      const value = Number(text);
      if (!isFinite(value) || (type === 'integer' && !Number.isInteger(value))) {
        throw new FieldError(name, `${label}: ${type === 'integer' ? 'a whole number' : 'a number'}, please`);
      }
      return value;
    };
    set = value => {
      number.value = value === undefined || value === null ? '' : String(value);
    };
    input = number;
  } else if (type === 'string') {
    const text = document.createElement('input');
    text.type = 'text';
    read = () => (text.value.trim() ? text.value.trim() : undefined);
    set = value => {
      text.value = value === undefined || value === null ? '' : String(value);
    };
    input = text;
  } else {
    // Objects and arrays: JSON, the one notation their values have in the API.
    const area = document.createElement('textarea');
    area.rows = 2;
    area.spellcheck = false;
    read = () => {
      const text = area.value.trim();
      if (!text) {
        return undefined;
      }
      try {
        return JSON.parse(text);
      } catch {
        throw new FieldError(name, `${label}: not valid JSON`);
      }
    };
    set = value => {
      area.value = value === undefined || value === null ? '' : JSON.stringify(value);
    };
    input = area;
  }
  input.className = 'ch-input';
  input.name = name;
  const hint = schema.examples?.[0] ?? schema.default;
  if (hint !== undefined && 'placeholder' in input) {
    input.placeholder = `e.g. ${shown(hint)}`;
  }
  title.appendChild(input);
  if (schema.description) {
    input.title = schema.description;
  }
  const error = document.createElement('div');
  error.className = 'ch-field-error';
  el.appendChild(error);
  return {
    name,
    el,
    read,
    set,
    showError(message: string | null) {
      error.textContent = message ?? '';
      el.classList.toggle('ch-invalid', !!message);
    }
  };
}

/**
 * The field an error answer names, or the nearest enclosing one:
 * `params.sky_model.0.flux_jy` is shown at `params.sky_model`.
 */
export function fieldFor(fields: Map<string, IField>, name: string | null): IField | undefined {
  let candidate = name ?? '';
  while (candidate) {
    const field = fields.get(candidate);
    if (field) {
      return field;
    }
    const dot = candidate.lastIndexOf('.');
    candidate = dot < 0 ? '' : candidate.slice(0, dot);
  }
  return undefined;
}
