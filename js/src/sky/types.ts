/** The shapes the sky map draws: what the server's `sky/*` routes and the Sky widget's traitlets carry. */

export interface SkyView {
  ra: number;
  dec: number;
  /** Field of view across the map's width, degrees. */
  fov: number;
  projection?: string;
}

export interface Footprint {
  job_id: string;
  agent?: string;
  status?: string;
  ra_deg: number;
  dec_deg: number;
  radius_deg: number;
  created_at?: string;
}

export interface SkySource {
  ra_deg: number;
  dec_deg: number;
  job_id?: string;
  [column: string]: unknown;
}

export interface AnnotationShape {
  type: 'point' | 'circle' | 'polygon';
  ra?: number;
  dec?: number;
  radius?: number;
  vertices?: [number, number][];
}

export interface Annotation {
  id?: string;
  job_id: string;
  shape: AnnotationShape;
  note?: string;
}

export interface ImageLayer {
  job_id: string;
  url: string;
  name?: string;
}
