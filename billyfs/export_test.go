package billyfs

// SetRevalidateHooks installs functions called by every open's
// revalidation: start when it has its attributes and has counted itself
// (before any comparison), act when it has decided the file changed and is
// about to truncate and invalidate. Call it before using f.
func SetRevalidateHooks(f *FS, start, act func()) {
	f.s.hooks = testHooks{revalidateStart: start, revalidateAct: act}
}

// SetCloseHook installs a function File.Close calls between sampling the
// size it records with its cookie use and dropping that use. Call it
// before using f.
func SetCloseHook(f *FS, h func()) {
	f.s.hooks.closeUnuse = h
}
