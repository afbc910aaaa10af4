/** Aladin Lite v3 ships no type declarations: the few calls the sky map makes, loosely typed. */
declare module 'aladin-lite' {
  const A: any;
  export default A;
}
